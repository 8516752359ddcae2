"""What every `proximo` command shares: the parser that says a usage mistake in one line, config fields as
--flags and back, warnings as plain lines, the --nproc token. Below proximo/cli.py and the modules that add
commands (proximo/llm/cli.py, proximo/sweep/, proximo/export.py), which all take these from here."""
from __future__ import annotations

import argparse
import functools
import sys
import typing
import warnings
from typing import Any, Sequence

from proximo.config import PPOConfig, field_types
from proximo.diagnostics import RULES
from proximo.fielddoc import help_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"proximo: error: {message} (see `{self.prog} --help`)\n")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(parse):
    def parse_optional(text: str):
        return None if text.lower() in ("none", "null", "off") else parse(text)
    parse_optional.__name__ = parse.__name__
    return parse_optional


def _parse_int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,64, got {text!r}") from None


def _parser_for(hint: Any):
    args = typing.get_args(hint)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return _optional(_parser_for(inner))
    if hint is bool:
        return _parse_bool
    if typing.get_origin(hint) is list:
        return _parse_int_list
    named = {int: "int", float: "float", str: "str"}
    parse = hint

    def typed(text: str):
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {named.get(hint, hint)}, got {text!r}") from None
    typed.__name__ = named.get(hint, "value")
    return typed


# Extra spellings of config flags: `--policy lstm` reads as the policy's kind, which is what it sets.
FLAG_ALIASES = {"recurrent": ("--policy",)}


def add_config_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One --dashed-flag per PPOConfig field (default: unset, so presets apply)."""
    group = parser.add_argument_group("config fields (override the preset)")
    defaults = PPOConfig().flat_dict()
    # Each help line is read from the field's definition (proximo/fielddoc.py); a threshold's says why its
    # default is what it is (the Rule's own reason).
    thresholds = RULES.config_class()
    for name, hint in field_types().items():
        if name in skip:
            continue
        flags = [f"--{name.replace('_', '-')}", *FLAG_ALIASES.get(name, ())]
        owner, field_name = (thresholds, name[5:]) if name.startswith("diag_") else (PPOConfig, name)
        group.add_argument(*flags, dest=f"cfg_{name}",
                           type=_parser_for(hint), default=None, metavar="V",
                           help=help_line(owner, field_name, defaults[name]))


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line."""
    return {key[4:]: value for key, value in vars(args).items() if key.startswith("cfg_") and value is not None}


def plain_warnings(command):
    """Decorate a command so warnings whose text starts with 'proximo:' print as one stderr line each."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if str(message).startswith("proximo:"):
                print(str(message), file=sys.stderr, flush=True)
            else:
                default(message, category, filename, lineno, file, line)
        with warnings.catch_warnings():
            warnings.showwarning = show
            return command(args)
    return run


def _is_nproc_token(argv: list[str], i: int) -> bool:
    """True for --nproc K / --nproc=K (or an abbreviation argparse accepts, such as --npr) and its value."""
    def flag(token: str) -> bool:
        name = token.split("=", 1)[0]
        return len(name) >= 4 and "--nproc".startswith(name)
    return flag(argv[i]) or (i > 0 and flag(argv[i - 1]) and "=" not in argv[i - 1])
