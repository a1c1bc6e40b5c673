"""FLOP counting: a meta-step's convolution and matrix-product FLOPs over (n + 1) times B's are the ratio it
would reach if every kernel ran as fast per FLOP as B's do, so a time ratio far above it is overhead, and one
near it is the arithmetic itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.ops import aten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def convolution_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                               _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward pass: the input gradient and the weight gradient each cost what the forward
    convolution does. (torch 2.14's formula ignores ``groups``: it counts the backward pass of a convolution of g
    groups as if each group saw all channels, and vmap over tasks turns per-task weights into such groups.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (bool(output_mask[0]) + bool(output_mask[1]))


def counting_flops(run: Callable[[], Any]) -> tuple[Any, int]:
    """``(run(), FLOPs it performed)``: convolutions and matrix products as ``torch.utils.flop_counter`` counts
    them (elementwise work, normalisation and pooling are not counted), grouped convolutions counted right."""
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: convolution_backward_flops}) as counter:
        result = run()
    return result, counter.get_total_flops()
