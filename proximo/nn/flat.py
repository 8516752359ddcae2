"""Parameters as views into one flat buffer, so the optimizer touches one tensor.

A 64x64 actor-critic has 14 small parameter tensors; Adam and gradient clipping over 14 tensors
cost about 250 us per minibatch on one CPU core, almost all of it per-tensor overhead. Over one
flat tensor they cost about 40 us. The module keeps its own Parameters (same names in the
state_dict); their storage is a slice of the flat buffer, and their .grad a slice of the flat
gradient, which autograd accumulates into in place as long as it is zeroed, not set to None.
"""
from __future__ import annotations

import torch
from torch import nn


def flatten_parameters(params: list[nn.Parameter]) -> nn.Parameter | None:
    """Re-home params into one flat Parameter (returned; its .grad too), or None, leaving them
    untouched, when they differ in dtype or device."""
    if not params or len({(p.dtype, p.device) for p in params}) != 1:
        return None
    total = sum(p.numel() for p in params)
    flat = nn.Parameter(torch.empty(total, dtype=params[0].dtype, device=params[0].device))
    _rehome(params, flat)
    return flat


def realias_parameters(params: list[nn.Parameter], flat: nn.Parameter) -> None:
    """Copy the parameters' current values into flat and make them views of it again.

    For when something replaced a parameter's storage (load_state_dict(assign=True), .to(), a
    zero_grad(set_to_none=True)); the optimizer keeps stepping `flat`, so its state stays valid.
    """
    if sum(p.numel() for p in params) != flat.numel():
        raise ValueError("the parameters no longer match the flat buffer in size")
    _rehome(params, flat)


def _rehome(params: list[nn.Parameter], flat: nn.Parameter) -> None:
    # Snapshot first: some parameters may already live inside flat, at other offsets.
    values = [p.detach().reshape(-1).clone() for p in params]
    flat.grad = torch.zeros_like(flat)
    offset = 0
    with torch.no_grad():
        for p, value in zip(params, values):
            n = p.numel()
            flat[offset:offset + n].copy_(value)
            p.data = flat.data[offset:offset + n].view_as(p)
            p.grad = flat.grad[offset:offset + n].view_as(p)
            offset += n


def is_flat_intact(params: list[nn.Parameter], flat: nn.Parameter) -> bool:
    """True while every parameter and its grad still alias the flat buffers."""
    if flat.grad is None:
        return False
    lo, hi = flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size()
    glo, ghi = flat.grad.data_ptr(), flat.grad.data_ptr() + flat.numel() * flat.element_size()
    for p in params:
        if not lo <= p.data_ptr() < hi or p.grad is None or not glo <= p.grad.data_ptr() < ghi:
            return False
    return True
