"""Tokenizers for the LLM side: a character-level one for the built-in tasks, and an adapter for
transformers tokenizers loaded from a local directory (tokenizer.json, or a SentencePiece tokenizer.model
as the Llama-2 / Mistral family ship, converted by transformers; chat templates from tokenizer_config.json
or chat_template.jinja). Both expose the same small interface: pad/bos/eos ids, stop_ids (every token that
ends a completion: eos, plus those generation_config.json names), encode, decode, save."""
from __future__ import annotations

import json
from pathlib import Path

from proximo.errors import ProximoError

CHAR_TOKENIZER_FILE = "proximo_tokenizer.json"
# Printable characters every built-in task needs; specials come first so their ids are stable.
DEFAULT_CHARS = "0123456789+-=:,;?! abcdefghijklmnopqrstuvwxyz"


class CharTokenizer:
    """One id per character, plus <pad>=0, <bos>=1, <eos>=2."""

    PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
    chat_template = None  # chat prompts use proximo's default template (proximo/llm/data.py)

    def __init__(self, chars: str = DEFAULT_CHARS) -> None:
        if len(set(chars)) != len(chars):
            raise ProximoError(f"tokenizer characters must be unique, got {chars!r}")
        self.chars = chars
        self.specials = [self.PAD, self.BOS, self.EOS]
        self._to_id = {c: i + len(self.specials) for i, c in enumerate(chars)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self.stop_ids = (self.eos_id,)

    @property
    def vocab_size(self) -> int:
        """Number of ids (specials included)."""
        return len(self.specials) + len(self.chars)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of the characters of text, with <bos> in front if asked."""
        try:
            ids = [self._to_id[c] for c in text]
        except KeyError as exc:
            raise ProximoError(f"character {exc.args[0]!r} is not in the tokenizer's alphabet "
                               f"{self.chars!r}; use only those characters") from None
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        """Text of ids, stopping at the first <eos> and skipping <pad>/<bos>."""
        out = []
        offset = len(self.specials)
        for i in ids:
            if i == self.eos_id:
                break
            if i >= offset:
                out.append(self.chars[i - offset])
        return "".join(out)

    def save(self, directory: Path) -> None:
        """Write proximo_tokenizer.json into directory."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / CHAR_TOKENIZER_FILE).write_text(json.dumps({"type": "char", "chars": self.chars}))

    @classmethod
    def load(cls, directory: Path) -> "CharTokenizer":
        """Read proximo_tokenizer.json from directory."""
        path = Path(directory) / CHAR_TOKENIZER_FILE
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProximoError(f"{path} is corrupt ({exc}); save the tokenizer again") from None
        chars = data.get("chars") if isinstance(data, dict) else None
        if not isinstance(chars, str) or not chars:
            raise ProximoError(f"{path} is damaged: it needs \"chars\", the alphabet as one string; save the "
                               "tokenizer again")
        return cls(chars)


class HFTokenizer:
    """Adapter giving a transformers tokenizer the CharTokenizer interface (pad/bos/eos ids). A tokenizer
    without a pad token (Llama-2, Mistral) pads with eos: every batch carries its own mask, so the pad id
    is never read as a token. stop_ids: eos first, then any other ids in extra_stop_ids (a model's
    generation_config.json eos_token_id list, such as an end-of-turn token)."""

    def __init__(self, tokenizer, extra_stop_ids: tuple[int, ...] = ()) -> None:
        self.tok = tokenizer
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ProximoError("the tokenizer has no eos token; set eos_token in its tokenizer_config.json")
        self.eos_id = int(eos)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_id = int(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else None
        self.stop_ids = (self.eos_id, *(i for i in dict.fromkeys(extra_stop_ids) if i != self.eos_id))

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        return len(self.tok)

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's own chat template (None if it has none)."""
        return getattr(self.tok, "chat_template", None)

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """Chat messages as prompt text through the tokenizer's template, ending with the assistant's turn;
        tools (JSON schemas) go to the template, which lists them where it has a place for them."""
        return self.tok.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of text (special tokens written in it are kept), with bos in front if asked, the tokenizer has
        one and text does not start with it."""
        ids = list(self.tok.encode(text, add_special_tokens=False))
        # A chat template that writes the bos token itself already put it first: do not double it.
        if add_bos and self.bos_id is not None and not (ids and ids[0] == self.bos_id):
            return [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ids up to the first stop token (eos or another of stop_ids)."""
        ids = list(ids)
        ends = [ids.index(i) for i in self.stop_ids if i in ids]
        if ends:
            ids = ids[:min(ends)]
        return self.tok.decode(ids, skip_special_tokens=True)

    def save(self, directory: Path) -> None:
        """Write the tokenizer files into directory."""
        self.tok.save_pretrained(str(directory))


def same_tokenizer(a, b) -> bool:
    """True when a and b turn text into the same ids and back: one class, one vocabulary, the same special
    ids and chat template (a reward model and a policy that agree can share sampled token ids)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, CharTokenizer):
        return a.chars == b.chars
    return ((a.eos_id, a.bos_id, a.pad_id, a.chat_template) == (b.eos_id, b.bos_id, b.pad_id, b.chat_template)
            and type(a.tok) is type(b.tok) and a.tok.get_vocab() == b.tok.get_vocab())


def generation_stop_ids(directory: Path, vocab_size: int) -> tuple[int, ...]:
    """The eos_token_id(s) of a model directory's generation_config.json (an int or a list, as Llama-3 and
    Qwen2 write theirs; () without the file); ProximoError in one line for a value that is no token id."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProximoError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
    value = data.get("eos_token_id") if isinstance(data, dict) else None
    ids = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids):
        raise ProximoError(f"{path}: eos_token_id {value!r} is not a token id (or list of them) below the "
                           f"vocabulary size {vocab_size}; fix it or delete the file")
    return tuple(ids)


def load_tokenizer(directory: Path):
    """The tokenizer stored in a model directory: proximo's char tokenizer or a transformers one (its stop
    tokens completed from generation_config.json)."""
    directory = Path(directory)
    if (directory / CHAR_TOKENIZER_FILE).is_file():
        return CharTokenizer.load(directory)
    sentencepiece_only = (directory / "tokenizer.model").is_file() and not (directory / "tokenizer.json").is_file()
    if sentencepiece_only:
        try:
            import sentencepiece  # noqa: F401 - transformers converts tokenizer.model with it
        except ImportError:
            raise ProximoError(f"{directory} has a SentencePiece tokenizer.model (and no tokenizer.json); reading "
                               "it needs the sentencepiece package: pip install sentencepiece") from None
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, ImportError, RuntimeError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ProximoError(f"no tokenizer in {directory} ({detail}); save one there with "
                           f"tokenizer.save_pretrained") from None
    return HFTokenizer(tokenizer, generation_stop_ids(directory, len(tokenizer)))
