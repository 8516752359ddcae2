"""LoRA adapters through peft: the policy trains low-rank updates of chosen linear layers, and the
reference policy is the same model with its adapter switched off (no second copy of the weights).

The adapter is injected into the transformers model in place, so every proximo function that takes
the model (generation, response log-probs, the value head on the shared trunk) runs it unchanged;
`disabled()` is the context in which that same model computes the reference's log-probs.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import AbstractContextManager
from pathlib import Path

from torch import nn

from proximo.errors import ProximoError
from proximo.extras import install_hint


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (torch Linear and transformers' Conv1D)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"}
    return sorted(names)


class LoRA:
    """A peft LoRA adapter on a causal LM: LoRA(model, r=8, alpha=16, targets="c_attn")."""

    def __init__(self, model: nn.Module, r: int, alpha: float, targets: str = "") -> None:
        try:
            from peft import LoraConfig, get_peft_model
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS
        except ImportError:
            raise ProximoError(f"lora_r > 0 needs {install_hint('peft')}") from None
        family = getattr(model.config, "model_type", "")
        wanted = [t.strip() for t in targets.split(",") if t.strip()] or list(DEFAULT_TARGETS.get(family, []))
        have = linear_module_names(model)
        if not wanted:
            raise ProximoError(f"no default LoRA targets for model type {family!r}; name them with --lora-target "
                               f"(its linear modules: {', '.join(have)})")
        missing = [t for t in wanted if t not in have]
        if missing:
            raise ProximoError(f"LoRA target module {missing[0]!r} is not in this {family} model; its linear modules "
                               f"are {', '.join(have)}: pick --lora-target from those")
        conv1d = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                  if type(module).__name__ == "Conv1D"}
        # Dropout stays 0: the sampler and the learner must be one function for PPO's ratios.
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=wanted, lora_dropout=0.0, bias="none",
                            fan_in_fan_out=any(t in conv1d for t in wanted))
        with warnings.catch_warnings():
            # peft (0.21) reads transformers' renamed is_gradient_checkpointing property: their API change,
            # not one proximo can act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated",
                                    category=FutureWarning)
            self.peft = get_peft_model(model, config)
        self.model = self.peft.get_base_model()  # the caller's model object, adapter layers inside
        self.targets = wanted

    @classmethod
    def load(cls, model: nn.Module, directory: str | Path, trainable: bool = False) -> "LoRA":
        """The adapter saved by save_adapter in directory, put on model (the same base it was trained on);
        trainable True to go on training it. Only adapter_model.safetensors is read (no pickle)."""
        directory = Path(directory)
        if not (directory / "adapter_model.safetensors").is_file():
            raise ProximoError(f"{directory} has no adapter_model.safetensors; proximo loads adapters only as "
                               f"safetensors (save them with save_pretrained(safe_serialization=True))")
        try:
            from peft import PeftModel
        except ImportError:
            raise ProximoError("loading a LoRA adapter needs peft; install it with `pip install -e '.[llm]'`") from None
        self = cls.__new__(cls)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated",
                                    category=FutureWarning)
            self.peft = PeftModel.from_pretrained(model, str(directory), is_trainable=trainable,
                                                  use_safetensors=True)
        self.model = self.peft.get_base_model()
        self.targets = sorted(self.peft.peft_config["default"].target_modules)
        return self

    def disabled(self) -> AbstractContextManager:
        """A context in which the model is the base model alone (the reference policy)."""
        return self.peft.disable_adapter()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter's parameters (peft froze everything else)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        total = sum(p.numel() for p in self.model.parameters())
        return sum(p.numel() for p in self.trainable_parameters()), total

    def save_adapter(self, directory: Path) -> None:
        """adapter_model.safetensors + adapter_config.json into directory (peft's layout)."""
        self.peft.save_pretrained(str(directory), safe_serialization=True)

    def merged(self) -> nn.Module:
        """A copy of the model with the adapter merged into its weights: a plain transformers model."""
        return copy.deepcopy(self.peft).merge_and_unload()
