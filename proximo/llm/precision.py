"""Where an LLM run computes and in what precision: the device (auto | cpu | cuda[:N] | mps) and the
dtype (float32 | bfloat16 | float16) of its forward and backward passes.

Mixed precision the standard way: trainable weights, their gradients and the Adam moments stay in
float32 (the master copy), and forward/backward passes run under torch.autocast in the low dtype.
Frozen weights (the base model under a LoRA adapter, the reference policy, the reward model) are
stored in the low dtype outright, which halves their memory. float16 has too few exponent bits for
gradients, so its losses are scaled dynamically (grow after a run of finite steps, halve and skip a
step on an overflow), as torch.amp.GradScaler does; bfloat16 needs no scaling.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from proximo.devices import accelerator, resolve_device
from proximo.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_llm_device(requested: str) -> torch.device:
    """The device of an LLM run: auto takes the GPU when torch sees one (a language model's matmuls are
    wide enough to win there); anything else is checked to exist (ConfigError naming the fix)."""
    if requested == "auto":
        found = accelerator()
        return torch.device(found or "cpu")
    return resolve_device(requested, image=False, widest_layer=0)[0]


def dtype_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """True if autocast in dtype runs on device (bfloat16 on CUDA needs compute capability 8.0+)."""
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        if dtype == torch.bfloat16:
            return bool(torch.cuda.is_bf16_supported())
        return True
    if device.type == "cpu":
        return dtype == torch.bfloat16 or hasattr(torch, "float16")
    return dtype == torch.float16  # mps autocast: float16


class Precision:
    """Autocast, loss scaling and the optimizer step of one run: Precision(device, "bfloat16")."""

    def __init__(self, device: torch.device, dtype: str = "float32", init_scale: float = 2.0 ** 16,
                 growth_interval: int = 2000) -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        self.device = torch.device(device)
        self.name = dtype
        self.dtype = DTYPES[dtype]
        if not dtype_supported(self.device, self.dtype):
            fix = "use --dtype float16 (with loss scaling) or float32" if dtype == "bfloat16" else "use --dtype float32"
            raise ConfigError(f"--dtype {dtype}: {self.device} does not support it "
                              f"({torch.cuda.get_device_name(self.device) if self.device.type == 'cuda' else self.device.type}); "
                              f"{fix}")
        self.scaling = self.dtype == torch.float16
        self.scale = float(init_scale) if self.scaling else 1.0
        self.growth_interval = growth_interval
        self.good_steps = 0
        self.skipped_steps = 0
        self.last_grad_norm: torch.Tensor | None = None  # the last step's gradient norm before clipping

    def state_dict(self) -> dict:
        """The float16 loss scale and its step counts, as a checkpoint keeps them."""
        return {"loss_scale": self.scale, "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        """Continue with a saved loss scale."""
        self.scale, self.good_steps = float(state["loss_scale"]), int(state["good_steps"])
        self.skipped_steps = int(state["skipped_steps"])

    @property
    def mixed(self) -> bool:
        """True when passes run in a dtype other than float32."""
        return self.dtype != torch.float32

    def autocast(self) -> AbstractContextManager:
        """The context forward passes run in (a no-op for float32)."""
        if not self.mixed:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def cast_frozen(self, module: nn.Module) -> nn.Module:
        """Store module's frozen parameters (requires_grad False) and buffers in the low dtype; returns it."""
        if not self.mixed:
            return module
        for param in module.parameters():
            if not param.requires_grad and param.is_floating_point():
                param.data = param.data.to(self.dtype)
        return module

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled for float16."""
        (loss * self.scale if self.scaling else loss).backward()

    def step(self, optimizer, max_grad_norm: float | None) -> bool:
        """Unscale, clip and step (optimizer.clip_and_step, the tail every proximo step shares); returns
        False when a float16 overflow skipped the step. last_grad_norm keeps the norm before clipping."""
        if self.scaling:
            grads = [optimizer.grad] if optimizer.grad is not None else [p.grad for p in optimizer.params
                                                                         if p.grad is not None]
            for grad in grads:
                grad.div_(self.scale)
            norm = float(optimizer.grad_norm())
            if not math.isfinite(norm):
                self.last_grad_norm = None
                self.scale /= 2.0
                self.good_steps = 0
                self.skipped_steps += 1
                optimizer.zero_grad()
                return False
            self.good_steps += 1
            if self.good_steps % self.growth_interval == 0:
                self.scale *= 2.0
        self.last_grad_norm = optimizer.clip_and_step(max_grad_norm)
        return True
