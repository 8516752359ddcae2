"""Tokenizers for the LLM side: a character-level one for the built-in tasks, and an adapter for
transformers tokenizers loaded from a local directory. Both expose the same small interface."""
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
    """Adapter giving a transformers tokenizer the CharTokenizer interface (pad/bos/eos ids)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ProximoError("the tokenizer has no eos token; set eos_token in its tokenizer_config.json")
        self.eos_id = int(eos)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_id = int(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else None

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        return len(self.tok)

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's own chat template (None if it has none)."""
        return getattr(self.tok, "chat_template", None)

    def apply_chat_template(self, messages: list[dict]) -> str:
        """Chat messages as prompt text through the tokenizer's template, ending with the assistant's turn."""
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Ids of text (special tokens written in it are kept), with bos in front if asked, the tokenizer has
        one and text does not start with it."""
        ids = list(self.tok.encode(text, add_special_tokens=False))
        # A chat template that writes the bos token itself already put it first: do not double it.
        if add_bos and self.bos_id is not None and not (ids and ids[0] == self.bos_id):
            return [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ids up to the first eos."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.tok.decode(ids, skip_special_tokens=True)

    def save(self, directory: Path) -> None:
        """Write the tokenizer files into directory."""
        self.tok.save_pretrained(str(directory))


def load_tokenizer(directory: Path):
    """The tokenizer stored in a model directory: proximo's char tokenizer or a transformers one."""
    directory = Path(directory)
    if (directory / CHAR_TOKENIZER_FILE).is_file():
        return CharTokenizer.load(directory)
    from transformers import AutoTokenizer
    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(directory), local_files_only=True))
    except (OSError, ValueError) as exc:
        raise ProximoError(f"no tokenizer in {directory} ({exc}); save one there with "
                           f"tokenizer.save_pretrained") from None
