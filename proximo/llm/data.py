"""Prompt datasets from local files, read with the `datasets` library: JSONL / JSON / CSV / Parquet, or a
folder written by `Dataset.save_to_disk`. TRL's conventions: a `prompt` column holding either a string
or a list of chat messages ({"role": ..., "content": ...}); every other column goes to the reward
functions as a keyword argument.

Chat prompts become text through the tokenizer's chat template when it has one, else through the
default of render_default_chat: each message as "ROLE: CONTENT", joined by single spaces, then " assistant:"
(only characters proximo's character tokenizer knows: lowercase roles, colon, space). For example
[{"role": "user", "content": "12+34="}] -> "user: 12+34= assistant:".
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any, Sequence

from proximo.errors import ProximoError
from proximo.extras import install_hint

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def render_default_chat(messages: list[dict[str, Any]]) -> str:
    """Chat messages as text (proximo's default template): 'role: content' per message, then ' assistant:'."""
    return " ".join(f"{m['role']}: {m['content']}" for m in messages) + " assistant:"


def render_prompt(prompt: str | list[dict[str, Any]], tokenizer, tools: list[dict] | None = None) -> str:
    """The text the model is given for a dataset prompt: a string as is, chat messages through the
    tokenizer's chat template (with the generation prompt; tools, JSON schemas, passed to it for a template
    that lists them, as Qwen2.5's and Llama-3.1's do) or, lacking one, render_default_chat."""
    if isinstance(prompt, str):
        return prompt
    apply = getattr(tokenizer, "apply_chat_template", None)
    if getattr(tokenizer, "chat_template", None) and apply is not None:
        return apply(prompt, tools=tools) if tools else apply(prompt)
    return render_default_chat(prompt)


def _check_prompt(prompt: Any, row: int, source: str) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        return
    raise ProximoError(f"{source} row {row}: prompt must be a string or a list of chat messages "
                       f"{{'role': ..., 'content': ...}}, got {str(prompt)[:80]!r}")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a local dataset file or save_to_disk folder, as plain Python dicts."""
    try:
        import datasets
    except ImportError:
        raise ProximoError(f"reading a dataset file needs {install_hint('datasets')}") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if not path.exists():
        raise ProximoError(f"no dataset at {path}; give a .jsonl, .json, .csv or .parquet file or a folder "
                           f"written by save_to_disk")
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
            if isinstance(loaded, datasets.DatasetDict):
                if "train" not in loaded:
                    raise ProximoError(f"{path} holds splits {', '.join(loaded)} but no 'train' split; save the "
                                       f"split to train on (dataset['name'].save_to_disk(...))")
                loaded = loaded["train"]
        else:
            kind = _FORMATS.get(path.suffix.lower())
            if kind is None:
                raise ProximoError(f"{path}: unknown dataset format {path.suffix!r}; use .jsonl, .json, .csv or "
                                   f".parquet, or a save_to_disk folder")
            # The Arrow cache goes to a throwaway folder: a prompt file is small and read once.
            with tempfile.TemporaryDirectory(prefix="proximo-dataset-") as cache:
                loaded = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache,
                                               keep_in_memory=True)
        return loaded.to_list()
    except ProximoError:
        raise
    except Exception as exc:  # a malformed file: one line naming it and the reader's complaint
        raise ProximoError(f"cannot read dataset {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None


class PromptDataset:
    """Rows with a `prompt` column (string or chat messages) and any other columns."""

    def __init__(self, rows: Sequence[dict[str, Any]], source: str = "dataset") -> None:
        rows = list(rows)
        if not rows:
            raise ProximoError(f"{source} has no rows")
        names = list(rows[0])
        if "prompt" not in names:
            raise ProximoError(f"{source} has no 'prompt' column; its columns are: {', '.join(names) or 'none'}. "
                               f"Rename the column holding the prompts to 'prompt'")
        for i, row in enumerate(rows):
            _check_prompt(row.get("prompt"), i, source)
        self.rows = rows
        self.source = source
        self.column_names = [n for n in names if n != "prompt"]

    @classmethod
    def load(cls, source: "str | Path | PromptDataset | Sequence[dict[str, Any]]") -> "PromptDataset":
        """A dataset from a file or folder path, a list of row dicts, or a PromptDataset (returned as is)."""
        if isinstance(source, PromptDataset):
            return source
        if isinstance(source, (str, Path)):
            return cls(_read_rows(Path(source)), str(source))
        if isinstance(source, Sequence) and all(isinstance(r, dict) for r in source):
            return cls(source, "dataset")
        raise ProximoError(f"a dataset is a file path, a save_to_disk folder or a list of row dicts, got "
                           f"{type(source).__name__}")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def conversational(self) -> bool:
        """True when the prompts are chat messages (then completions reach reward functions as messages)."""
        return not isinstance(self.rows[0]["prompt"], str)

    def prompts(self, rows: Sequence[int]) -> list:
        """The raw prompt values of rows."""
        return [self.rows[i]["prompt"] for i in rows]

    def columns(self, rows: Sequence[int]) -> dict[str, list]:
        """Every non-prompt column for rows, as {name: [value per row]}."""
        return {name: [self.rows[i].get(name) for i in rows] for name in self.column_names}

    def split(self, fraction: float, seed: int) -> tuple["PromptDataset", "PromptDataset"]:
        """(train, held-out): a seeded random fraction of the rows held out (at least one row each)."""
        if not 0.0 < fraction < 1.0:
            raise ProximoError(f"eval_fraction must lie in (0, 1), got {fraction}")
        if len(self.rows) < 2:
            raise ProximoError(f"{self.source} has {len(self.rows)} row; eval_fraction needs at least 2")
        order = list(range(len(self.rows)))
        random.Random(seed).shuffle(order)
        held = min(len(order) - 1, max(1, round(fraction * len(order))))
        pick = lambda idx: PromptDataset([self.rows[i] for i in sorted(idx)], self.source)  # noqa: E731
        return pick(order[held:]), pick(order[:held])
