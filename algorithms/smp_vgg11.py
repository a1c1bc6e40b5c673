"""The seed's backbone, segmentation-models-pytorch's U-Net with a VGG-11 encoder, as pure
``init`` / ``apply`` functions: one template module, run through ``torch.func.functional_call`` with a
params dict, so it meets torch.func (grad of grad, vmap) exactly like the hand-written U-Net.

Normalisation: smp's "vgg11" encoder has no BatchNorm at all (that is "vgg11_bn"); only the decoder
(centre block and decoder blocks) is normalised. ``norm`` sets the decoder's normalisation:
- ``"batch"``: BatchNorm2d with ``track_running_stats=False``, i.e. statistics of the batch at hand and
  no running buffers (the seed's model, in MAML's batch-statistics mode);
- ``"group"``: each of those BatchNorm2d replaced by GroupNorm with :func:`algorithms.unet.group_count`
  groups;
- ``"none"``: smp's "identity" norm (the decoder convs then get biases).
The model has parameters only, no buffers, so nothing stateful trips ``vmap``. ReLUs are made
out-of-place, as functional transforms require.

``depth`` is smp's ``encoder_depth`` (1..5); encoder layers deeper than it, which smp builds but never
runs, are dropped so every parameter takes part. ``width`` gives ``decoder_channels`` =
(width * 2**(depth-1), ..., width): the seed's smp default is depth 5, width 16. Inputs of any size are
padded (replicating edges) to a multiple of 2**depth and cropped back, as in the U-Net.

Pretrained ``encoder_weights="imagenet"`` are read from the Hugging Face cache, or downloaded from the
hub smp uses when absent; without a connection that fails within seconds with one line, not after
smp's minute of retries. The 3-channel first conv is summed over RGB for grey input, as smp does.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import torch
from torch import Tensor, nn
from torch.func import functional_call

from algorithms import unet
from algorithms.models import Model, ModelConfig

Params = dict[str, Tensor]
CONNECT_TIMEOUT_S = 5.0


class PretrainedWeightsError(ValueError):
    """Pretrained weights asked for but not obtainable (a ValueError, so the CLI reports it in one line)."""


def _decoder_norm(norm: str) -> dict | str:
    if norm == "none":
        return "identity"
    return {"type": "batchnorm", "track_running_stats": False}  # "group" swaps these for GroupNorm below


def _to_group_norm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(unet.group_count(c), c))
        else:
            _to_group_norm(child)


def _make_relus_out_of_place(module: nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, nn.ReLU):
            child.inplace = False


def _drop_unused_encoder_layers(encoder: nn.Module, depth: int) -> None:
    """smp's VGG encoder returns the feature before the (depth+1)-th max-pool and stops there."""
    pools = [i for i, m in enumerate(encoder.features) if isinstance(m, nn.MaxPool2d)]
    if depth < len(pools):
        encoder.features = encoder.features[: pools[depth]]


def _imagenet_state_dict() -> dict[str, Tensor]:
    """The VGG-11 ImageNet encoder weights smp would load, from the local Hugging Face cache or the hub."""
    import segmentation_models_pytorch as smp
    from huggingface_hub import constants, hf_hub_download
    from safetensors.torch import load_file

    settings = smp.encoders.encoders["vgg11"]["pretrained_settings"]["imagenet"]
    where = dict(repo_id=settings["repo_id"], filename="model.safetensors", revision=settings["revision"])
    try:
        return load_file(hf_hub_download(**where, local_files_only=True))
    except FileNotFoundError:
        pass  # not cached: download below
    endpoint = constants.ENDPOINT
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
        path = hf_hub_download(**where, endpoint=endpoint, etag_timeout=CONNECT_TIMEOUT_S)
    except Exception as err:  # any failure to fetch means the same thing to the user
        raise PretrainedWeightsError(
            f"smp-vgg11: cannot get the ImageNet encoder weights ({settings['repo_id']} from {endpoint}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}; "
            "use encoder_weights=None, or fetch them once where there is internet"
        ) from None
    return load_file(path)


def build_module(config: ModelConfig, seed: int) -> nn.Module:
    """The smp module as described above, its weights drawn with torch's RNG seeded by ``seed``."""
    import segmentation_models_pytorch as smp

    pretrained = config.encoder_weights == "imagenet"
    state = _imagenet_state_dict() if pretrained else None  # fail before spending time on the model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = smp.Unet(
            "vgg11",
            encoder_depth=config.depth,
            encoder_weights=None,
            decoder_use_norm=_decoder_norm(config.norm),
            decoder_channels=[config.width * 2 ** (config.depth - 1 - i) for i in range(config.depth)],
            in_channels=3 if pretrained else 1,
            classes=1,
        )
    if pretrained:
        net.encoder.load_state_dict(state)
        net.encoder.set_in_channels(1, pretrained=True)
    if config.norm == "group":
        _to_group_norm(net)
    _make_relus_out_of_place(net)
    _drop_unused_encoder_layers(net.encoder, config.depth)
    buffers = [name for name, _ in net.named_buffers()]
    if buffers:
        raise RuntimeError(f"smp-vgg11: unexpected buffers {buffers}; the functional model holds parameters only")
    return net.requires_grad_(False)


def build(config: ModelConfig) -> Model:
    """A Model whose ``init(seed)`` builds smp's module with torch's RNG seeded (the global RNG is left
    as it was) and returns its parameters, and whose ``apply`` runs a shared template module."""
    if config.name != "smp-vgg11":
        raise ValueError(f"smp_vgg11.build: config names model {config.name!r}")
    template = build_module(config, seed=0)
    multiple = 2**config.depth

    def init(seed: int) -> Params:
        return {name: p.detach().clone().float() for name, p in build_module(config, seed).named_parameters()}

    def apply(params: Params, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"smp-vgg11: expected images of shape [B, 1, H, W], got {list(x.shape)}")
        height, width = x.shape[-2:]
        padded, (top, left) = unet.pad_to_multiple(x, multiple)
        logits = functional_call(template, params, (padded,), strict=True)
        return logits[..., top : top + height, left : left + width]

    return Model(config, init, apply)
