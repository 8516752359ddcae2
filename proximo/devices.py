"""Choosing the device of a run: cpu, cuda, cuda:N or mps, and what `auto` picks and why."""
from __future__ import annotations

import torch

from proximo.errors import ConfigError

# From this width on an MLP's matmuls are large enough for a GPU to beat the CPU per minibatch; below
# it, kernel-launch latency (~5-10 us a kernel) outweighs the arithmetic of 64-256 wide layers.
WIDE_MLP = 1024


def accelerator() -> str | None:
    """'cuda' or 'mps' when torch sees one, else None."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return None


def resolve_device(requested: str, image: bool, widest_layer: int) -> tuple[torch.device, str]:
    """(device, why) for a config's `device` and the policy's shape (CNN torso, widest MLP layer).

    Raises ConfigError naming the fix when the requested device is not on this machine.
    """
    found = accelerator()
    if requested == "auto":
        if found is None:
            return torch.device("cpu"), "auto: no GPU found"
        if image:
            return torch.device(found), f"auto: {found} found and the policy has a CNN torso"
        if widest_layer >= WIDE_MLP:
            return torch.device(found), f"auto: {found} found and the MLP is wide ({widest_layer} units)"
        return torch.device("cpu"), (f"auto: {found} found, but an MLP of at most {widest_layer} units runs "
                                     f"faster on the CPU (use --device {found} to override)")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: torch sees no CUDA GPU on this machine (torch "
                              f"{torch.__version__}); use --device cpu or --device auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), numbered from 0; pick one of them")
    if device.type == "mps" and found != "mps":
        raise ConfigError(f"--device {requested}: torch sees no Apple MPS device here; use --device cpu or auto")
    return device, "requested"
