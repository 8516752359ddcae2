"""What a config field means, said once where the field is defined, and read by everything that explains it.

A field is declared as `name: type = doc(default, "one-line meaning", choices=ALLOWED)`. From that one place
come the field's `--help` line (proximo/flags.py, proximo/llm/cli.py), the error a bad choice raises
(check_choices, called by each config's validate), and the configuration reference of the docs
(reference_markdown, rendered by docs/hooks.py). A subclass that only changes a default re-declares the field
plainly (`learning_rate: float = 1e-3`): its meaning and choices are found on the base class. check_field_types
checks each field's value against its type, for the classic and the LLM configs alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any, Iterable

from proximo.errors import ConfigError

_MISSING = dataclasses.MISSING


def doc(default: Any = _MISSING, meaning: str = "", *, choices: Iterable[str] | None = None,
        default_factory: Any = _MISSING) -> Any:
    """A dataclass field with its one-line meaning and (for a choice) its allowed values as metadata.

    A list or dict default is copied for each instance (it becomes the field's default_factory)."""
    if not meaning or "\n" in meaning:
        raise ValueError("doc() needs a one-line meaning")
    metadata = {"help": meaning, "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict)):
        value = default
        default, default_factory = _MISSING, (lambda: type(value)(value))
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _metadata(cls: type, name: str) -> dict[str, Any]:
    """The field's metadata from the nearest class in cls's MRO that declared it with a meaning."""
    for klass in cls.__mro__:
        fields = getattr(klass, "__dataclass_fields__", {})
        if name in fields and (fields[name].metadata.get("help") or fields[name].metadata.get("reason")):
            return dict(fields[name].metadata)
    return {}


def meaning(cls: type, name: str) -> str:
    """The one-line meaning of field `name` of config class `cls` ("" if it has none)."""
    data = _metadata(cls, name)
    return data.get("help") or data.get("reason") or ""


def choices(cls: type, name: str) -> tuple[str, ...] | None:
    """The allowed values of field `name` of `cls`, or None where it is not a choice."""
    return _metadata(cls, name).get("choices")


def check_choices(config: Any) -> None:
    """Raise ConfigError for the first field of a config instance whose value is not one of its choices."""
    for f in dataclasses.fields(config):
        allowed = choices(type(config), f.name)
        value = getattr(config, f.name)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{f.name} must be one of {', '.join(allowed)}; got {value!r} "
                              f"({meaning(type(config), f.name)})")


def help_line(cls: type, name: str, default: Any) -> str:
    """The --help text of a config field: its meaning, its choices and its default."""
    allowed = choices(cls, name)
    text = meaning(cls, name)
    if allowed:
        text += f" ({' | '.join(allowed)})"
    return f"{text}; default {_shown(default)}".replace("%", "%%")


def _shown(value: Any) -> str:
    """A default as a flag would spell it: none for None, "" for the empty string, 64,64 for a list."""
    if value is None:
        return "none"
    if value == "":
        return '""'
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def undocumented_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The options of a parser whose help says nothing but (at most) a default: no meaning.

    The count behind `proximo COMMAND --help` quality: tests/test_fielddoc.py keeps it at 0."""
    missing = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        words = re.sub(r"\(?default:? [^\s;:)]*\)?", "", action.help or "")
        if not re.search(r"[A-Za-z]{2}", words):
            missing.append(action.option_strings[0])
    return missing


def subcommand_parsers(parser: argparse.ArgumentParser, prefix: str = "proximo") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its command line ("proximo train", "proximo llm grpo", ...)."""
    found = {prefix: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(subcommand_parsers(sub, f"{prefix} {name}"))
    return found


def _type_text(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint)
    return str(text).replace("typing.", "").replace("NoneType", "None")


def table_cell(text: str) -> str:
    """Text for a markdown table cell: pipes escaped, <eos>-like words shown rather than read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def reference_markdown(cls: type, flat: dict[str, tuple[type, str, Any]] | None = None) -> str:
    """A markdown table of a config class's fields: flag, type, default and meaning (with choices).

    flat, when given, maps field names to (owner class, owner field name, default) for fields that live in a
    nested config (PPOConfig's diag_<name> thresholds)."""
    hints = typing.get_type_hints(cls)
    rows = ["| field | flag | type | default | meaning |", "|---|---|---|---|---|"]
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not _MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not _MISSING:
            defaults[f.name] = f.default_factory()
    entries = [(name, cls, name, hints[name], defaults.get(name)) for name in hints
               if not dataclasses.is_dataclass(defaults.get(name))]
    for name, (owner, owner_name, default) in (flat or {}).items():
        entries.append((name, owner, owner_name, typing.get_type_hints(owner)[owner_name], default))
    for name, owner, owner_name, hint, default in entries:
        text = table_cell(meaning(owner, owner_name))
        allowed = choices(owner, owner_name)
        if allowed:
            text += " One of: " + ", ".join(f"`{c}`" for c in allowed) + "."
        flag = f"`--{name.replace('_', '-')}`"
        rows.append(f"| `{name}` | {flag} | {_type_text(hint).replace('|', 'or')} | `{default!r}` | {text} |")
    return "\n".join(rows) + "\n"


_UnionType = type(int | None)


def check_field_types(config: Any) -> None:
    """Check every field of a config dataclass against its type hint (ints widen to float, None where
    Optional, lists of ints), raising ConfigError that names the field; normalizes floats and lists."""
    for name, hint in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
        for kind in allowed:
            if kind is type(None) and value is None:
                break
            if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(config, name, float(value))
                break
            if kind in (int, str, bool) and type(value) is kind:
                break
            if isinstance(kind, type) and dataclasses.is_dataclass(value) and isinstance(value, kind):
                break  # a nested config, which validates itself
            if typing.get_origin(kind) is list and isinstance(value, (list, tuple)) \
                    and all(type(v) is int for v in value):
                setattr(config, name, list(value))
                break
        else:
            names = " or ".join("None" if k is type(None) else _type_name(k) for k in allowed)
            raise ConfigError(f"{name} must be of type {names}, got {value!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")
