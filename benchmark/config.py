"""Run configuration: a frozen dataclass, filled from a preset TOML, a user TOML and CLI overrides.

A run is a pure function of its :class:`RunConfig`; the hash of the resolved configuration is the run id, so
a repeated run is recognised whatever preset or flags produced it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.catalogue import cell_line

PRESET_DIR = Path(__file__).with_name("presets")


class ConfigError(ValueError):
    """A configuration that cannot be run: one line, naming the file or key."""


@dataclass(frozen=True)
class RunConfig:
    # what is compared
    algo: str = "reptile"
    holdout: str = "MCF7"
    k: int = 3
    seed: int = 0
    # data: None is the embedded synthetic LIVECell look-alike
    data_root: str | None = None
    crop: int | None = 64  # side of the square crops in every episode; None = whole images
    query_size: int = 3  # query images per meta-training task
    # model
    model: str = "unet"  # "unet" | "smp-vgg11"
    depth: int = 3
    width: int = 16
    norm: str = "group"
    encoder_weights: str | None = None
    # algorithm
    loss: str = "dice"
    inner_steps: int = 10
    inner_lr: float = 0.4
    outer_optimizer: str = "adam"
    outer_lr: float = 1e-3
    meta_batch: int = 7
    meta_steps: int = 100
    task_batching: str = "auto"
    algo_options: tuple[tuple[str, Any], ...] = ()  # algorithm-specific hyper-parameters, e.g. reptile's epsilon
    # evaluation: identical episodes for every algorithm with the same seed, k and data
    eval_episodes: int = 40  # episodes on the held-out line
    seen_episodes: int = 10  # episodes on each meta-training line's test split
    eval_queries: int = 4  # query images per evaluation episode
    eval_batch: int = 8  # episodes adapted together (vmap over episodes)
    # fair adaptation and budget curves, both on validation episodes of the meta-training lines' val split
    adapt_rates: tuple[float, ...] = (0.4, 0.2, 0.1, 0.05, 0.02, 0.01)  # () = the seed protocol's rate only
    validation_episodes: int = 16
    budget_every: int = 0  # meta-steps between budget-curve points; 0 = none
    # execution
    device: str = "cpu"
    threads: int = 1  # torch's CPU threads; the last bits of CPU kernels depend on it, so it is part of the run id
    checkpoint_every: int = field(default=25, compare=False)  # changes no number: not part of the run id
    preset: str = field(default="default", compare=False)  # provenance only; not part of the run id

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "algo_options":
                object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name)))
        object.__setattr__(self, "holdout", cell_line(self.holdout).name)
        if self.data_root is not None:
            object.__setattr__(self, "data_root", str(Path(self.data_root).expanduser().resolve()))
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"invalid device {self.device!r}; use cpu, cuda, cuda:N or auto")
        rules = {  # setting: (valid?, what is allowed)
            "seed": (self.seed >= 0, ">= 0"),
            "k": (self.k >= 1, ">= 1"),
            "query_size": (self.query_size >= 1, ">= 1"),
            "inner_steps": (self.inner_steps >= 0, ">= 0"),
            "meta_batch": (self.meta_batch >= 1, ">= 1"),
            "meta_steps": (self.meta_steps >= 0, ">= 0"),
            "eval_episodes": (self.eval_episodes >= 1, ">= 1"),
            "seen_episodes": (self.seen_episodes >= 0, ">= 0"),
            "eval_queries": (self.eval_queries >= 1, ">= 1"),
            "eval_batch": (self.eval_batch >= 1, ">= 1"),
            "threads": (self.threads >= 1, ">= 1"),
            "validation_episodes": (self.validation_episodes >= 1, ">= 1"),
            "budget_every": (self.budget_every >= 0, ">= 0"),
            "adapt_rates": (all(rate > 0 for rate in self.adapt_rates), "rates > 0, or [] for none"),
            "checkpoint_every": (self.checkpoint_every >= 1, ">= 1"),
            "crop": (self.crop is None or self.crop >= 8, ">= 8, or 'none' for whole images"),
            "inner_lr": (self.inner_lr > 0, "> 0"),
            "outer_lr": (self.outer_lr > 0, "> 0"),
        }
        for name, (ok, allowed) in rules.items():
            if not ok:
                raise ConfigError(f"invalid value for {name}: {getattr(self, name)!r} (must be {allowed})")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.algo_options)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["algo_options"] = self.options
        return d

    @property
    def data_identity(self) -> str:
        """What data the numbers come from: the real root's absolute path, or the synthetic generator's version."""
        if self.data_root is not None:
            return self.data_root
        from tasks.synth import GENERATOR_VERSION

        return f"synthetic-v{GENERATOR_VERSION}"

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of every field that can change the numbers, of the data, and of the version
        of the code that computes them (:mod:`benchmark.numerics`)."""
        from benchmark import numerics

        identity = {f.name: v for f, v in zip(dataclasses.fields(self), dataclasses.astuple(self)) if f.compare}
        identity["algo_options"] = sorted(self.algo_options)
        identity["data_root"] = self.data_identity
        identity["numerics"] = numerics.NUMERICS_VERSION
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.algo}-{cell_line(self.holdout).prefix}-k{self.k}-s{self.seed}-{digest}"


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?|mps")
OPTIONAL = {"crop": int, "data_root": str, "encoder_weights": str}  # the fields that may be None


def _checked(name: str, value: Any) -> Any:
    """``value`` as the type of field ``name`` (an int is a valid float), or a ConfigError naming the field."""
    kind = OPTIONAL.get(name) or type(FIELDS[name].default)
    if name in OPTIONAL and value in (None, "none"):  # TOML has no null: "none" stands for it
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is tuple:  # a list of numbers (TOML reads a list)
        numbers = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not numbers:
            raise ConfigError(f"invalid value for {name}: {value!r} (expected a list of numbers)")
        return tuple(float(v) for v in value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"invalid value for {name}: {value!r} (expected {kind.__name__})")
    return value

HELP = {
    "algo": "algorithm name (see algorithms.available())",
    "holdout": "cell line held out of meta-training and evaluated on (any spelling: MCF7, mcf7, SH-SY5Y, shsy5y)",
    "k": "support images per episode (shots), in meta-training and adaptation",
    "seed": "seed of initialisation, meta-training tasks and evaluation episodes",
    "data_root": "a LIVECell root in the official layout; 'none' = the embedded synthetic look-alike",
    "crop": "side of the square crops of every episode in pixels; 'none' = whole images",
    "query_size": "query images per meta-training task",
    "model": "backbone: 'unet' (hand-written functional U-Net) or 'smp-vgg11' (the seed's VGG-11 U-Net)",
    "depth": "U-Net depth (down-sampling levels)",
    "width": "U-Net channels at the first level (doubled at each level)",
    "norm": "normalisation: group, batch (batch statistics only) or none",
    "encoder_weights": "smp-vgg11 encoder weights: 'none' or 'imagenet' (needs internet)",
    "loss": "segmentation loss: dice, bce or bce_dice",
    "inner_steps": "adaptation steps n (inner loop in meta-training and at test time)",
    "inner_lr": "inner-loop / adaptation learning rate (plain gradient descent)",
    "outer_optimizer": "outer optimiser: any torch.optim or torch_optimizer name",
    "outer_lr": "outer learning rate",
    "meta_batch": "tasks per meta-step",
    "meta_steps": "meta-training steps",
    "task_batching": "tasks of a meta-batch: loop, vmap, a chunk size, or auto (loop on CPU; on a GPU vmap where it fits)",
    "eval_episodes": "evaluation episodes on the held-out line",
    "seen_episodes": "evaluation episodes on each meta-training line's test split (0 = skip)",
    "eval_queries": "query images per evaluation episode",
    "eval_batch": "evaluation episodes adapted together (vmap over episodes)",
    "adapt_rates": "candidate test-time adaptation rates, comma-separated; each run selects one on validation "
    "episodes of its meta-training lines (never the held-out line) and is evaluated at it ('tuned' protocol) and at "
    "inner_lr ('seed' protocol); 'none' = the seed protocol only",
    "validation_episodes": "episodes from the meta-training lines' val split that select the adaptation rate and "
    "score the budget curve",
    "budget_every": "meta-steps between points of the budget curve (validation IoU against meta-training spent); "
    "0 = none",
    "device": "cpu, cuda, cuda:N or auto",
    "threads": "torch CPU threads of the run (default 1, so that sweep --jobs N shares N cores without "
    "oversubscribing them; part of the run id, since CPU results differ in the last bits with it)",
    "checkpoint_every": "meta-steps between checkpoints (an interrupted run resumes from the last)",
}


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    unknown = sorted(set(table) - set(FIELDS) - {"algorithms"})
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}")
    algorithms = table.get("algorithms", {})
    if not isinstance(algorithms, dict) or not all(isinstance(t, dict) for t in algorithms.values()):
        raise ConfigError(f"{path}: 'algorithms' must hold one [algorithms.NAME] table per algorithm")
    for name, value in table.items():
        if name != "algorithms":
            try:
                _checked(name, value)
            except ConfigError as err:
                raise ConfigError(f"{path}: {err}") from None
    return table


def algorithm_table_sources(preset: str, config_file: Path | None, algo: str) -> dict[str, Path]:
    """Which file set each of ``algo``'s own settings (the last one that named it), for errors that name it."""
    sources: dict[str, Path] = {}
    for path in [preset_path(preset)] + ([Path(config_file)] if config_file is not None else []):
        for key in read_toml(path).get("algorithms", {}).get(algo, {}):
            sources[key] = path
    return sources


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(available_presets())}")
    return path


def resolve(preset: str = "default", config_file: Path | None = None, **overrides: Any) -> RunConfig:
    """Preset, then the user's TOML, then explicit overrides (None means 'not given').

    Algorithm-specific settings live in ``[algorithms.<name>]`` tables; only the chosen algorithm's table is kept.
    """
    layers = [read_toml(preset_path(preset))]
    if config_file is not None:
        layers.append(read_toml(Path(config_file)))
    values: dict[str, Any] = {}
    per_algo: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, table in layer.pop("algorithms", {}).items():
            per_algo.setdefault(name, {}).update(table)
        values.update(layer)
    options = dict(overrides.pop("algo_options", None) or ())
    values.update({k: v for k, v in overrides.items() if v is not None})
    algo = values.get("algo", RunConfig.algo)
    merged_options = {**per_algo.get(algo, {}), **options}
    try:
        return RunConfig(**values, algo_options=tuple(sorted(merged_options.items())), preset=preset)
    except TypeError as err:
        raise ConfigError(f"invalid configuration: {err}") from None
