"""Initialisers the official `Transformer.initialize_weights` uses beyond torch.nn.init (method §2).

`SphereEncoder.initialize_weights` applies them; they are in-place and expect to run under no_grad.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def xavier_uniform_flat_(weight: torch.Tensor, gain: float = 1.0) -> None:
    """Xavier-uniform on a conv kernel viewed as (weight.shape[0], -1), as the official code does.

    So fan_out = shape[0] and fan_in = the rest; nn.init on the 4-D kernel would count the kernel area in
    fan_out too (a smaller bound). For a ConvTranspose2d, shape[0] is its *input* channels, as official.
    """
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1), gain=gain)


def xavier_uniform_fused_(*weights: torch.Tensor) -> None:
    """Xavier-uniform over (out_i, in) matrices as if they were one Linear stacked along the output.

    The official SwiGLU has one fused Linear(width, 2 * hidden) where ours has two, so the bound is
    sqrt(6 / (in + sum out_i)), not each matrix's own.
    """
    fan_in = weights[0].shape[1]
    fan_out = sum(w.shape[0] for w in weights)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    for w in weights:
        nn.init.uniform_(w, -bound, bound)
