"""Make a local model directory the way a user's would look: a transformers causal LM built from a
config (random weights, no download) and a fast BPE tokenizer trained here with `tokenizers`, with
special tokens and a chat template, written by save_pretrained (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json). Tests, benchmarks and `proximo llm new-model` use it to
exercise the path a real model takes: AutoModelForCausalLM + AutoTokenizer, not proximo's built-ins.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from proximo.errors import ProximoError
from proximo.llm.models import quiet_transformers

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
TURN_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
# A Llama/Zephyr-style template: the template itself writes the bos token, so encoding its output must
# not add a second one (HFTokenizer.encode checks).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
FAMILIES = ("llama", "gpt2")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """A transformers fast tokenizer (byte-level BPE, digits split one per token as Llama's are) trained
    on texts, with <s>, </s>, <pad>, the chat-turn tokens and CHAT_TEMPLATE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, *TURN_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=list(TURN_TOKENS))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_causal_lm(family: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, hidden: int = 128,
                    layers: int = 3, heads: int = 4, max_positions: int = 128, seed: int = 0) -> torch.nn.Module:
    """A randomly initialized transformers causal LM of the given family and shape (dropout off)."""
    torch.manual_seed(seed)
    ids = dict(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=max_positions, tie_word_embeddings=True, **ids)
        return LlamaForCausalLM(config).eval()
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=hidden, n_layer=layers,
                            n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        return GPT2LMHeadModel(config).eval()
    raise ProximoError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")


def make_model_dir(directory: str | Path, texts: Iterable[str], family: str = "llama", vocab_size: int = 512,
                   hidden: int = 128, layers: int = 3, heads: int = 4, max_positions: int = 128,
                   seed: int = 0) -> Path:
    """Train a BPE tokenizer on texts, build a fresh causal LM for it and save both into directory
    (transformers' layout, safetensors weights). Returns the directory."""
    if family not in FAMILIES:
        raise ProximoError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if hidden % heads:
        raise ProximoError(f"hidden {hidden} is not a multiple of heads {heads}; pick a width heads divides")
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    model = build_causal_lm(family, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                            tokenizer.pad_token_id, hidden, layers, heads, max_positions, seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    quiet_transformers()
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def task_texts(task, n: int = 4000, seed: int = 0) -> list[str]:
    """Training text for a tokenizer that must spell a built-in task: chat-rendered prompts with answers."""
    import random
    rng = random.Random(seed)
    prompts = task.sample_prompts(rng, n)
    return [f"<|user|>{p}<|end|><|assistant|>{task.answer(p)}" for p in prompts]
