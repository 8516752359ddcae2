"""SFT and preference datasets from local files (the formats proximo.llm.data reads), in TRL's column
conventions, turned into the texts proximo's losses take:

SFT (`sft_examples`): `prompt` + `completion` (strings; or conversational: prompt = chat messages,
completion = a list with one assistant message), or `messages` (a whole conversation: train on its final
assistant message given everything before it). -> [(prompt text, completion text)].

Preferences (`preference_triples`): `prompt` + `chosen` + `rejected` (strings; or conversational: prompt
= chat messages, chosen/rejected = lists with one assistant message), or TRL's implicit-prompt form
(no `prompt`; chosen and rejected are whole conversations that share every message but the last).
-> [(prompt text, chosen text, rejected text)].

Prompt messages become text through render_prompt (the tokenizer's chat template with the generation
prompt), so training sees exactly the prompt text that generation and reward scoring see.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from proximo.errors import ProximoError
from proximo.llm.data import _check_prompt, _read_rows, render_prompt


def read_rows(source: "str | Path | Sequence[dict[str, Any]]") -> tuple[list[dict[str, Any]], str]:
    """(rows, name) of a dataset file, save_to_disk folder or list of row dicts."""
    if isinstance(source, (str, Path)):
        rows, name = _read_rows(Path(source)), str(source)
    elif isinstance(source, Sequence) and all(isinstance(r, dict) for r in source):
        rows, name = list(source), "dataset"
    else:
        raise ProximoError(f"a dataset is a file path, a save_to_disk folder or a list of row dicts, got "
                           f"{type(source).__name__}")
    if not rows:
        raise ProximoError(f"{name} has no rows")
    return rows, name


def split_rows(rows: list[dict[str, Any]], fraction: float, seed: int, name: str
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out): a seeded random fraction of the rows held out (at least one row each)."""
    if not 0.0 < fraction < 1.0:
        raise ProximoError(f"eval_fraction must lie in (0, 1), got {fraction}")
    if len(rows) < 2:
        raise ProximoError(f"{name} has {len(rows)} row; eval_fraction needs at least 2")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = min(len(order) - 1, max(1, round(fraction * len(order))))
    return [rows[i] for i in sorted(order[held:])], [rows[i] for i in sorted(order[:held])]


def load_train_eval(dataset: Any, eval_dataset: Any, eval_fraction: float | None, seed: int
                    ) -> tuple[list[dict], str, list[dict] | None, str | None]:
    """(train rows, train name, held-out rows or None, held-out name or None) from a dataset and either a
    separate held-out dataset or a fraction of it to hold out."""
    if eval_dataset is not None and eval_fraction is not None:
        raise ProximoError("pass eval_dataset or eval_fraction, not both")
    rows, name = read_rows(dataset)
    if eval_fraction is not None:
        train, held = split_rows(rows, eval_fraction, seed, name)
        return train, name, held, f"{name} (held-out fraction {eval_fraction})"
    if eval_dataset is not None:
        held, held_name = read_rows(eval_dataset)
        return rows, name, held, held_name
    return rows, name, None, None


def _columns(rows: list[dict[str, Any]]) -> str:
    return ", ".join(rows[0]) or "none"


def _is_messages(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value))


def _assistant_text(value: Any, name: str, row: int, column: str) -> str:
    """A completion column's text: a string as is, or the content of a list with one assistant message."""
    if isinstance(value, str):
        return value
    if _is_messages(value) and len(value) == 1 and value[0]["role"] == "assistant":
        return value[0]["content"]
    raise ProximoError(f"{name} row {row}: {column} must be a string or a list with one assistant message "
                       f"{{'role': 'assistant', 'content': ...}}, got {str(value)[:80]!r}")


def _split_conversation(messages: Any, name: str, row: int, column: str) -> tuple[list[dict], str]:
    """(the messages before the last, the last one's content) of a conversation ending in an assistant turn."""
    if not _is_messages(messages):
        raise ProximoError(f"{name} row {row}: {column} must be a list of chat messages "
                           f"{{'role': ..., 'content': ...}}, got {str(messages)[:80]!r}")
    last = messages[-1]["role"]
    if last != "assistant":
        raise ProximoError(f"{name} row {row}: {column} ends with a {last!r} message; the last message must be "
                           f"the assistant turn to train on (drop the trailing turns or add the reply)")
    if len(messages) < 2:
        raise ProximoError(f"{name} row {row}: {column} has only the assistant message; put the conversation "
                           f"it answers before it")
    return messages[:-1], messages[-1]["content"]


def sft_examples(rows: list[dict[str, Any]], name: str, tokenizer) -> list[tuple[str, str]]:
    """(prompt text, completion text) per row of a prompt/completion or messages dataset."""
    columns = set(rows[0])
    if {"prompt", "completion"} <= columns:
        out = []
        for i, row in enumerate(rows):
            _check_prompt(row.get("prompt"), i, name)
            out.append((render_prompt(row["prompt"], tokenizer),
                        _assistant_text(row.get("completion"), name, i, "completion")))
        return out
    if "messages" in columns:
        out = []
        for i, row in enumerate(rows):
            prompt, completion = _split_conversation(row.get("messages"), name, i, "messages")
            out.append((render_prompt(prompt, tokenizer), completion))
        return out
    raise ProximoError(f"{name} has neither 'prompt' and 'completion' columns nor a 'messages' column; its columns "
                       f"are: {_columns(rows)}. Rename them to prompt/completion (or messages, a chat ending in "
                       f"the assistant turn)")


def preference_triples(rows: list[dict[str, Any]], name: str, tokenizer) -> list[tuple[str, str, str]]:
    """(prompt text, chosen text, rejected text) per row of a preference dataset."""
    columns = set(rows[0])
    if not {"chosen", "rejected"} <= columns:
        missing = " and ".join(repr(c) for c in ("chosen", "rejected") if c not in columns)
        raise ProximoError(f"{name} has no {missing} column; its columns are: {_columns(rows)}. A preference "
                           f"dataset needs prompt, chosen and rejected columns (or chosen/rejected conversations "
                           f"sharing their prompt messages)")
    out = []
    for i, row in enumerate(rows):
        if "prompt" in columns:
            _check_prompt(row.get("prompt"), i, name)
            prompt = row["prompt"]
            chosen = _assistant_text(row.get("chosen"), name, i, "chosen")
            rejected = _assistant_text(row.get("rejected"), name, i, "rejected")
        else:
            # TRL's implicit prompt: both conversations carry it, only their last (assistant) turns differ.
            prompt, chosen = _split_conversation(row.get("chosen"), name, i, "chosen")
            rejected_prompt, rejected = _split_conversation(row.get("rejected"), name, i, "rejected")
            if rejected_prompt != prompt:
                raise ProximoError(f"{name} row {i}: chosen and rejected differ before their last message; "
                                   f"without a 'prompt' column they must share every message but the last "
                                   f"(or add a prompt column)")
        out.append((render_prompt(prompt, tokenizer), chosen, rejected))
    return out
