"""Make a local model directory the way a user's would look: a transformers causal LM built from a
config (random weights, no download) and a tokenizer trained here, with special tokens and a chat
template, written as transformers writes them. Tests, benchmarks and `proximo llm new-model` use it to
exercise the path a real model takes: AutoModelForCausalLM + AutoTokenizer, not proximo's built-ins.

The forms users' folders come in, each selectable:
- tokenizer "bpe": a byte-level BPE trained with `tokenizers`, saved by save_pretrained (tokenizer.json,
  tokenizer_config.json, the chat template in chat_template.jinja, a pad token);
- tokenizer "sentencepiece": a SentencePiece BPE model with byte fallback trained with `sentencepiece`,
  written as the Llama-2 / Mistral repositories ship it (tokenizer.model + tokenizer_config.json naming
  LlamaTokenizer, the chat template inside tokenizer_config.json, no pad token);
- weights in one model.safetensors, or shards model-0000K-of-0000N.safetensors + model.safetensors.index.json
  (max_shard_size, as save_pretrained writes any model of a few GB);
- generation_config.json (save_pretrained's), optionally listing the end-of-turn token as a second eos.
"""
from __future__ import annotations

import io
import json
import re
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
# The Llama-2 chat layout, written here from its documented shape: each user turn as
# "<s>[INST] ... [/INST]", each assistant turn as " ... </s>"; a system message opens the first user turn.
LLAMA2_CHAT_TEMPLATE = (
    "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else none %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}{{ bos_token }}[INST] "
    "{% if loop.first and system %}<<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}"
    "{{ message['content'] }} [/INST]{% else %} {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
FAMILIES = ("llama", "mistral", "gpt2")
TOKENIZERS = ("bpe", "sentencepiece")


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


def train_sentencepiece_tokenizer(texts: Iterable[str], directory: str | Path, vocab_size: int = 512):
    """Train a SentencePiece BPE model (byte fallback, digits split, <unk>=0 <s>=1 </s>=2, no pad) on texts
    and write it into directory as Llama-2 / Mistral ship theirs: tokenizer.model, tokenizer_config.json
    (LlamaTokenizer, add_bos_token, LLAMA2_CHAT_TEMPLATE inside it) and special_tokens_map.json. Returns the
    transformers tokenizer read back from those files (transformers converts tokenizer.model itself)."""
    import sentencepiece
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    # The template's own markers are text too: trained on, they become pieces instead of byte fallbacks.
    corpus = texts + [f"[INST] {t} [/INST]" for t in texts[:len(texts) // 2]]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, character_coverage=1.0, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity", minloglevel=2)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": "<unk>"}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", **specials, "pad_token": None, "add_bos_token": True,
        "add_eos_token": False, "legacy": False, "model_max_length": 4096, "chat_template": LLAMA2_CHAT_TEMPLATE},
        indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


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
    if family == "mistral":
        from transformers import MistralConfig, MistralForCausalLM
        config = MistralConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                               max_position_embeddings=max_positions, sliding_window=None,
                               tie_word_embeddings=False, **ids)
        return MistralForCausalLM(config).eval()
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=hidden, n_layer=layers,
                            n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        return GPT2LMHeadModel(config).eval()
    raise ProximoError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")


def make_model_dir(directory: str | Path, texts: Iterable[str], family: str = "llama", vocab_size: int = 512,
                   hidden: int = 128, layers: int = 3, heads: int = 4, max_positions: int = 128,
                   seed: int = 0, tokenizer: str = "bpe", max_shard_size: str | int | None = None,
                   end_of_turn_stops: bool = False) -> Path:
    """Train a tokenizer ("bpe" or "sentencepiece", see the module docstring) on texts, build a fresh causal
    LM for it and save both into directory (transformers' layout, safetensors weights; sharded with an index
    past max_shard_size, e.g. "200KB"). end_of_turn_stops (bpe only): generation_config.json lists the chat
    template's <|end|> as a second eos, as Llama-3 and Qwen2 list their end-of-turn tokens. Returns the
    directory."""
    if family not in FAMILIES:
        raise ProximoError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    if tokenizer not in TOKENIZERS:
        raise ProximoError(f"unknown tokenizer kind {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    if hidden % heads:
        raise ProximoError(f"hidden {hidden} is not a multiple of heads {heads}; pick a width heads divides")
    if max_shard_size is not None and not (isinstance(max_shard_size, int) and max_shard_size > 0 or re.fullmatch(
            r"\d+(\.\d+)?\s*[KMG]?i?B", str(max_shard_size), flags=re.IGNORECASE)):
        raise ProximoError(f"max_shard_size {max_shard_size!r} is not a size; give bytes or a size such as 200KB or 2GB")
    if end_of_turn_stops and tokenizer != "bpe":
        raise ProximoError("end_of_turn_stops needs the bpe tokenizer (its chat template ends turns with <|end|>)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    quiet_transformers()
    if tokenizer == "sentencepiece":
        tok = train_sentencepiece_tokenizer(texts, directory, vocab_size)
        pad_id = tok.unk_token_id  # no pad token (as Llama-2's); the config's pad id is <unk>, as Llama-2's is
    else:
        tok = train_bpe_tokenizer(texts, vocab_size)
        pad_id = tok.pad_token_id
    model = build_causal_lm(family, len(tok), tok.bos_token_id, tok.eos_token_id, pad_id, hidden, layers, heads,
                            max_positions, seed)
    if end_of_turn_stops:
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    shard = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(directory), safe_serialization=True, **shard)
    if tokenizer == "bpe":
        tok.save_pretrained(str(directory))
    return directory


def task_texts(task, n: int = 4000, seed: int = 0) -> list[str]:
    """Training text for a tokenizer that must spell a built-in task: chat-rendered prompts with answers."""
    import random
    rng = random.Random(seed)
    prompts = task.sample_prompts(rng, n)
    return [f"<|user|>{p}<|end|><|assistant|>{task.answer(p)}" for p in prompts]
