"""A U-Net written as two pure functions of a parameter dict, so that torch.func can differentiate
through inner loops (twice), batch over tasks with ``vmap`` and swap weights without touching modules.

Architecture (``depth`` D, ``width`` w; level l has ``w * 2**l`` channels):

    enc0 .. enc{D-1}   block(conv3x3 -> norm -> ReLU, twice), then 2x2 max-pool
    enc{D}             the same block at the bottom, no pool (``w * 2**D`` channels)
    dec{D-1} .. dec0   2x2 stride-2 transposed conv (halves channels), concatenate the skip of the
                       same level, block
    head               1x1 conv to one logit channel

Every conv has a bias (GroupNorm normalises over several channels, so a per-channel bias is not
redundant there). Depth 3, width 16, GroupNorm: 483,153 parameters.

Normalisation (``norm``):
- ``"group"``: GroupNorm with ``group_count(c)`` groups: the most groups, at most 8, that divide c and
  keep at least 4 channels in each group, so that narrow layers are not normalised channel by channel
  (16 channels -> 4 groups, 32 and more -> 8, 8 -> 2, 4 or fewer -> 1).
- ``"batch"``: BatchNorm with the statistics of the batch at hand, no running statistics (as in
  MAML): the output for one image depends on the rest of its batch.
- ``"none"``: conv -> ReLU.

Any input size: H and W are padded up to a multiple of ``2**depth`` by replicating the edge pixels
(the padding is split as evenly as possible between the two sides; replication works for every
size, even inputs smaller than the padding), and the logits are cropped back to H x W.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from algorithms.models import ModelConfig

Params = dict[str, Tensor]
MAX_GROUPS = 8
MIN_CHANNELS_PER_GROUP = 4


def group_count(channels: int) -> int:
    """GroupNorm groups for a layer of ``channels`` channels (see the module docstring)."""
    limit = max(1, min(MAX_GROUPS, channels // MIN_CHANNELS_PER_GROUP))
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


def _block_shapes(prefix: str, c_in: int, c_out: int, norm: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i, c in ((1, c_in), (2, c_out)):
        shapes[f"{prefix}.conv{i}.weight"] = (c_out, c, 3, 3)
        shapes[f"{prefix}.conv{i}.bias"] = (c_out,)
        if norm != "none":
            shapes[f"{prefix}.norm{i}.weight"] = (c_out,)
            shapes[f"{prefix}.norm{i}.bias"] = (c_out,)
    return shapes


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order (the order ``init`` draws them in).
    ``config`` is validated by :class:`algorithms.models.ModelConfig`."""
    depth, width, norm = config.depth, config.width, config.norm
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 1
    for level in range(depth + 1):
        c = width * 2**level
        shapes |= _block_shapes(f"enc{level}", c_in, c, norm)
        c_in = c
    for level in reversed(range(depth)):
        c = width * 2**level
        shapes[f"dec{level}.up.weight"] = (2 * c, c, 2, 2)
        shapes[f"dec{level}.up.bias"] = (c,)
        shapes |= _block_shapes(f"dec{level}", 2 * c, c, norm)
    shapes["head.weight"] = (1, width, 1, 1)
    shapes["head.bias"] = (1,)
    return shapes


def init(config: ModelConfig, seed: int) -> Params:
    """He-normal weights (std sqrt(2 / fan_in); the linear head sqrt(1 / fan_in)), zero biases,
    unit norm scales: float32, deterministic in ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias"):
            value = torch.zeros(shape)
        elif ".norm" in name:
            value = torch.ones(shape)
        else:
            if ".up." in name:  # [in, out, 2, 2], stride 2: each output pixel sees one pixel of each input channel
                fan_in = shape[0]
            else:
                fan_in = shape[1] * shape[2] * shape[3]
            gain = 1.0 if name.startswith("head.") else 2.0
            value = torch.randn(shape, generator=generator) * math.sqrt(gain / fan_in)
        params[name] = value
    return params


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad H and W of ``x`` [..., H, W] up to a multiple by replicating edge pixels, split as evenly as
    possible between the sides; also returns (top, left), where the original image starts."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        x = F.pad(x, (left, pad_w - left, top, pad_h - top), mode="replicate")
    return x, (top, left)


def _normalize(params: Params, prefix: str, x: Tensor, norm: str) -> Tensor:
    if norm == "group":
        return F.group_norm(x, group_count(x.shape[1]), params[f"{prefix}.weight"], params[f"{prefix}.bias"])
    if norm == "batch":
        return F.batch_norm(x, None, None, params[f"{prefix}.weight"], params[f"{prefix}.bias"], training=True)
    return x


def _block(params: Params, prefix: str, x: Tensor, norm: str) -> Tensor:
    for i in (1, 2):
        x = F.conv2d(x, params[f"{prefix}.conv{i}.weight"], params[f"{prefix}.conv{i}.bias"], padding=1)
        x = F.relu(_normalize(params, f"{prefix}.norm{i}", x, norm))
    return x


def apply(config: ModelConfig, params: Params, x: Tensor) -> Tensor:
    """Logits [B, 1, H, W] for images ``x`` [B, 1, H, W], any H and W. Pure: no state, no in-place ops."""
    depth, norm = config.depth, config.norm
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"unet: expected images of shape [B, 1, H, W], got {list(x.shape)}")
    height, width = x.shape[-2:]
    x, (top, left) = pad_to_multiple(x, 2**depth)

    skips = []
    for level in range(depth):
        x = _block(params, f"enc{level}", x, norm)
        skips.append(x)
        x = F.max_pool2d(x, 2)
    x = _block(params, f"enc{depth}", x, norm)
    for level in reversed(range(depth)):
        x = F.conv_transpose2d(x, params[f"dec{level}.up.weight"], params[f"dec{level}.up.bias"], stride=2)
        x = _block(params, f"dec{level}", torch.cat([skips[level], x], dim=1), norm)
    logits = F.conv2d(x, params["head.weight"], params["head.bias"])
    return logits[..., top : top + height, left : left + width]
