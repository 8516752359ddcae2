"""Causal LMs for proximo.llm: a built-in tiny GPT-2/Llama built from a config (no downloads), any
transformers causal LM in a local directory, and the small linear heads (value, reward) on top.

A model directory is transformers' save_pretrained layout (config.json + model.safetensors, or the
shards model-0000K-of-0000N.safetensors that model.safetensors.index.json lists) plus the tokenizer files;
heads live next to it as <name>_head.safetensors. Nothing is ever unpickled: weights_files checks every
weight file is present and is safetensors before transformers opens any.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from proximo.checkpoint import CheckpointError, CheckpointFallbackWarning, atomic_save_tensors, load_tensors
from proximo.errors import ProximoError
from proximo.extras import need
from proximo.llm.tokenizer import CharTokenizer, load_tokenizer
from proximo.rundir import RunDir

# Built-in shapes: about 0.6M (tiny), 0.6M Llama-style (tiny-llama) and 2.4M (small) parameters.
BUILTIN_MODELS = {
    "tiny": dict(kind="gpt2", n_layer=3, n_embd=128, n_head=4),
    "tiny-llama": dict(kind="llama", n_layer=3, n_embd=128, n_head=4),
    "small": dict(kind="gpt2", n_layer=6, n_embd=192, n_head=6),
}
MAX_POSITIONS = 64


def build_builtin(name: str, vocab_size: int, seed: int | None = None) -> nn.Module:
    """A freshly initialized built-in causal LM ('tiny', 'tiny-llama' or 'small') for vocab_size ids."""
    need("transformers", "a language model")
    if name not in BUILTIN_MODELS:
        raise ProximoError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTIN_MODELS)} "
                           f"or give a model directory")
    spec = BUILTIN_MODELS[name]
    if seed is not None:
        torch.manual_seed(seed)
    if spec["kind"] == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config(vocab_size=vocab_size, n_positions=MAX_POSITIONS, n_embd=spec["n_embd"],
                            n_layer=spec["n_layer"], n_head=spec["n_head"], bos_token_id=1, eos_token_id=2,
                            pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            activation_function="gelu_pytorch_tanh")  # same function as gelu_new, one fused op
        model = GPT2LMHeadModel(config)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=spec["n_embd"], intermediate_size=4 * spec["n_embd"],
                             num_hidden_layers=spec["n_layer"], num_attention_heads=spec["n_head"],
                             num_key_value_heads=spec["n_head"], max_position_embeddings=MAX_POSITIONS,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
        model = LlamaForCausalLM(config)
    return model.eval()


def is_model_dir(path: Path) -> bool:
    """True if path holds a saved causal LM (config.json with a model_type)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "model_type" in data


def resolve_model_dir(path: str | Path) -> Path:
    """The model directory for a model directory or a proximo run directory (its model/ folder)."""
    path = Path(path)
    if is_model_dir(path):
        return path
    if is_model_dir(path / "model"):
        return path / "model"
    newest = _newest_checkpoint_model(path)
    if newest is not None:
        return newest
    raise ProximoError(f"{path} is neither a model directory (config.json + safetensors weights) nor a "
                       f"proximo run directory with a model/ folder; pass one of those or a built-in "
                       f"name ({', '.join(BUILTIN_MODELS)})")


SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# What other tools save in pickle (torch.load) form; proximo names them to say why it will not read them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _check_safetensors_file(path: Path, directory: Path) -> None:
    """Raise unless path starts as a safetensors file does: an 8-byte little-endian header length, then a
    JSON object of that length inside the file (a pickle or zip archive renamed .safetensors fails here)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    length = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) < 9 or not 2 <= length <= size - 8 or head[8:9] != b"{":
        raise ProximoError(f"{path} is not a safetensors file (its first bytes are no safetensors header); "
                           f"proximo loads only safetensors weights: re-save the model in {directory} with "
                           "save_pretrained(safe_serialization=True)")


def weights_files(directory: str | Path) -> list[Path]:
    """The safetensors weight files of a model directory: model.safetensors, or every shard that
    model.safetensors.index.json names, each checked to exist inside the directory and to be safetensors.
    ProximoError in one line otherwise (a missing shard, a pickle file named by the index, pickle weights
    only): no weight file is opened by torch.load, ever."""
    directory = Path(directory)
    single, index = directory / SAFETENSORS_FILE, directory / SAFETENSORS_INDEX
    resave = "re-save it with save_pretrained(safe_serialization=True)"
    if single.is_file():
        _check_safetensors_file(single, directory)
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise ProximoError(f"{index} is not a valid index ({type(exc).__name__}); copy the file again or "
                               f"{resave}") from None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(v, str) for v in weight_map.values()):
            raise ProximoError(f"{index} has no \"weight_map\" of tensor names to shard files; copy the file again "
                               f"or {resave}")
        shards = []
        for name in sorted(set(weight_map.values())):
            shard = directory / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ProximoError(f"{index} names shard {name!r}, outside the model directory; a shard must be a "
                                   "file name inside it")
            if not name.endswith(".safetensors"):
                kind = "a pickle file" if name.endswith(PICKLE_SUFFIXES) else "not a .safetensors file"
                raise ProximoError(f"{index} names shard {name}, {kind}; proximo never unpickles weights: "
                                   f"{resave}")
            if not shard.is_file():
                listed = len(set(weight_map.values()))
                raise ProximoError(f"shard {name} (one of {listed} listed in {index.name}) is missing from "
                                   f"{directory}; copy every shard (an interrupted download?)")
            _check_safetensors_file(shard, directory)
            shards.append(shard)
        return shards
    pickles = sorted(p.name for p in directory.iterdir() if p.name.endswith(PICKLE_SUFFIXES)
                     or p.name.endswith(".bin.index.json"))
    if pickles:
        raise ProximoError(f"{directory} holds only pickle weights ({', '.join(pickles[:3])}); proximo loads only "
                           f"safetensors: load it once in transformers and {resave}")
    raise ProximoError(f"{directory} has no weights ({SAFETENSORS_FILE} or {SAFETENSORS_INDEX} with its shards); "
                       f"save the model there with save_pretrained")


def model_architectures(directory: str | Path) -> list[str]:
    """The "architectures" config.json names (e.g. ["LlamaForCausalLM"]; [] when it names none)."""
    try:
        data = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    names = data.get("architectures") if isinstance(data, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def is_sequence_classifier(directory: str | Path) -> bool:
    """True if config.json says the model is a transformers sequence classifier (a reward model's form)."""
    return any(name.endswith("ForSequenceClassification") for name in model_architectures(directory))


def _newest_checkpoint_model(run_dir: Path) -> Path | None:
    """The model folder of a run directory's newest checkpoint when the run has no model/ (it was stopped
    before its end), said in a CheckpointFallbackWarning; None when it has none."""
    if not (run_dir / "config.json").is_file():
        return None
    folders = [f for f in RunDir(run_dir, create=False).checkpoints() if is_model_dir(f)]
    if not folders:
        return None
    warnings.warn(f"proximo: {run_dir} has no model/ (the run stopped before its end); using its newest "
                  f"checkpoint, {folders[-1]}", CheckpointFallbackWarning, stacklevel=3)
    return folders[-1]


def load_pretrained(directory: Path, auto_class, **kwargs) -> nn.Module:
    """auto_class.from_pretrained(directory) from safetensors only (weights_files checked first), in float32
    and eval mode; one-line ProximoError for what transformers raises on a damaged folder. float32 whatever
    dtype the folder was saved in (published models mostly bf16, which transformers 5 would keep): trained
    weights are the optimizer's float32 master copy, and frozen ones are cast to the run's dtype after."""
    kwargs.setdefault("dtype", torch.float32)
    weights_files(directory)
    quiet_transformers()
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # huggingface_hub before 0.32 validates no config fields itself
        StrictDataclassError = ValueError
    try:
        model = auto_class.from_pretrained(str(directory), local_files_only=True, use_safetensors=True, **kwargs)
    # What transformers raises for a damaged config.json or weights file (found by tests/test_fuzz.py): wrong
    # value types (TypeError, and huggingface_hub's strict-dataclass errors), missing fields, weights of other
    # shapes (RuntimeError), a corrupt safetensors file.
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, SafetensorError,
            StrictDataclassError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ProximoError(f"cannot load a model from {directory}: {detail}") from None
    # Dropout stays off: PPO ratios and KL terms assume the sampler and the learner are one function.
    return model.eval()


def load_model(source: str | Path, seed: int | None = None, tokenizer_chars: str | None = None,
               dtype: torch.dtype = torch.float32):
    """(model, tokenizer, model_dir or None) for a built-in name or a local directory (no downloads). A
    directory's weights are read in dtype (float32 by default: trained weights are the float32 master
    copy; a LoRA run in bf16 reads its frozen base straight in bf16, with no float32 copy on the way)."""
    need("transformers", "a language model")
    if isinstance(source, str) and source in BUILTIN_MODELS:
        tokenizer = CharTokenizer() if tokenizer_chars is None else CharTokenizer(tokenizer_chars)
        return build_builtin(source, tokenizer.vocab_size, seed), tokenizer, None
    directory = resolve_model_dir(source)
    if is_sequence_classifier(directory):
        raise ProximoError(f"{directory} holds a sequence-classification model (a reward model: "
                           f"{model_architectures(directory)[0]}), not a causal LM; give it as --reward-model or "
                           f"--reward, and a causal LM as the policy")
    from transformers import AutoModelForCausalLM
    model = load_pretrained(directory, AutoModelForCausalLM, dtype=dtype)
    return model, load_tokenizer(directory), directory


def quiet_transformers() -> None:
    """Turn off transformers' progress bars: a bar per load or save would bury proximo's own progress lines."""
    from transformers.utils import logging as transformers_logging
    transformers_logging.disable_progress_bar()


def save_model(model: nn.Module, tokenizer, directory: Path, heads: dict[str, nn.Module] | None = None,
               max_shard_size: str | int | None = None) -> None:
    """Write model (safetensors + config.json; shards + index past max_shard_size, transformers' default
    when None), tokenizer and heads into directory."""
    quiet_transformers()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shard = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(directory), safe_serialization=True, **shard)
    tokenizer.save(directory)
    for name, head in (heads or {}).items():
        atomic_save_tensors(directory / f"{name}_head.safetensors", head.state_dict())


def position_limit(model: nn.Module) -> int | None:
    """The most positions (prompt + completion tokens) the model takes, if its config says."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on transformers' activation checkpointing (non-reentrant, so frozen embeddings under a LoRA
    adapter need no input-grad hook) and zero every dropout: the recomputing passes run in train mode,
    and PPO's ratios need the sampler and the learner to be one deterministic function."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ProximoError(f"{type(model).__name__} does not support gradient checkpointing; "
                           "turn gradient_checkpointing off")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def hidden_size(model: nn.Module) -> int:
    """Width of the model's last hidden state."""
    config = model.config
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def load_head(directory: Path, name: str, width: int) -> "ScalarHead":
    """A scalar head saved by save_model, or a CheckpointError naming the missing file."""
    head = ScalarHead(width)
    path = Path(directory) / f"{name}_head.safetensors"
    tensors = load_tensors(path)
    try:
        head.load_state_dict(tensors)
    except RuntimeError as exc:  # missing or unexpected keys, another width
        raise CheckpointError(f"{path} does not fit a {width}-wide scalar head ({str(exc).splitlines()[0]}); "
                              "the file is damaged or from another model") from None
    return head


class ScalarHead(nn.Module):
    """A linear map from the last hidden state [B, L, H] to one scalar per position [B, L]. linear: an
    existing nn.Linear(H, 1) to use (shared, not copied), such as a sequence classifier's score layer."""

    def __init__(self, width: int, init_std: float = 0.0, linear: nn.Linear | None = None) -> None:
        super().__init__()
        if linear is not None:
            if linear.out_features != 1 or linear.in_features != width:
                raise ProximoError(f"a scalar head maps {width} features to 1; this layer maps "
                                   f"{linear.in_features} to {linear.out_features}")
            self.linear = linear
            return
        self.linear = nn.Linear(width, 1)
        nn.init.normal_(self.linear.weight, std=init_std) if init_std > 0 else nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scalars [B, L] from hidden states [B, L, H]."""
        return self.linear(hidden).squeeze(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only real tokens, so left padding does not shift them: [B, L] -> [B, L]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   with_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(logits [B, L, V] or None, last hidden state [B, L, H]) for padded ids [B, L]."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    hidden = out.last_hidden_state
    logits = model.get_output_embeddings()(hidden) if with_logits else None
    return logits, hidden
