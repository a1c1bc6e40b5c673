"""Model configs and the one entry point, ``build_model``, that turns a config into pure
``init(seed) -> params`` and ``apply(params, x) -> logits`` functions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Callable, NamedTuple

from torch import Tensor

from algorithms import unet

Params = dict[str, Tensor]
MODEL_NAMES = ("unet", "smp-vgg11")
NORMS = ("group", "batch", "none")
ENCODER_WEIGHTS = (None, "imagenet")
SMP_MAX_DEPTH = 5  # VGG-11 has five pooling stages


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model.

    ``depth`` is the number of 2x down-samplings and ``width`` the channel count of the finest level
    (doubling per level). For ``smp-vgg11`` they set smp's ``encoder_depth`` (1..5) and
    ``decoder_channels`` = (width * 2**(depth-1), ..., width); the seed's smp default is depth 5,
    width 16, norm "batch". ``norm`` applies to both models (see :mod:`algorithms.smp_vgg11`).
    """

    name: str = "unet"
    depth: int = 4
    width: int = 16
    norm: str = "group"
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model: unknown name {self.name!r}; valid: {', '.join(MODEL_NAMES)}")
        max_depth = SMP_MAX_DEPTH if self.name == "smp-vgg11" else None
        if not isinstance(self.depth, int) or self.depth < 1 or (max_depth and self.depth > max_depth):
            bound = f"between 1 and {max_depth}" if max_depth else ">= 1"
            raise ValueError(f"model {self.name}: depth must be an integer {bound}, got {self.depth!r}")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"model {self.name}: width must be an integer >= 1, got {self.width!r}")
        if self.norm not in NORMS:
            raise ValueError(f"model {self.name}: norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if self.encoder_weights not in ENCODER_WEIGHTS:
            raise ValueError(f"model {self.name}: encoder_weights must be None or 'imagenet', got {self.encoder_weights!r}")
        if self.encoder_weights is not None and self.name != "smp-vgg11":
            raise ValueError(f"model {self.name}: encoder_weights applies to smp-vgg11 only")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**d)


class Model(NamedTuple):
    """A model as pure functions: ``init(seed)`` -> float32 params; ``apply(params, x [B,1,H,W])`` ->
    logits [B,1,H,W] for any H, W."""

    config: ModelConfig
    init: Callable[[int], Params]
    apply: Callable[[Params, Tensor], Tensor]


def build_model(config: ModelConfig) -> Model:
    """The functions are ``functools.partial`` objects bound to ``config``, so a Model pickles (for
    process pools) as long as its config does."""
    if config.name == "unet":
        return Model(config, partial(unet.init, config), partial(unet.apply, config))
    from algorithms import smp_vgg11  # imported on demand: smp pulls in timm, slow to import

    return smp_vgg11.build(config)
