"""MkDocs hooks: the generated reference pages and the results files.

- `<!-- config-reference: NAME -->` in a page becomes the table of a config class's fields, read from the
  meanings and choices declared at each field (proximo/fielddoc.py), so the docs say what `--help` says.
- `<!-- cli-reference -->` becomes every command's flags, read from the argparse parsers.
- benchmarks/results/ is published under the same path, so pages link the results files behind each claim and
  a link to a file that is not there fails the strict build.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's proximo, as the API pages use

RESULTS = "benchmarks/results"


def on_files(files, config):
    """Publish benchmarks/README.md and benchmarks/results/* under benchmarks/ (kept out of the navigation)."""
    paths = [ROOT / "benchmarks" / "README.md", *sorted((ROOT / RESULTS).iterdir())]
    for path in paths:
        if path.is_file():
            file = File(str(path.relative_to(ROOT)), str(ROOT), config["site_dir"], config["use_directory_urls"],
                        inclusion=InclusionLevel.NOT_IN_NAV)
            files.append(file)
    return files


def _config_classes():
    from proximo.config import PPOConfig, field_types
    from proximo.diagnostics import RULES
    from proximo.llm.config import GRPOConfig, RewardModelConfig, RLHFConfig, SFTConfig

    thresholds = RULES.config_class()
    defaults = thresholds()
    flat = {name: (thresholds, name[5:], getattr(defaults, name[5:])) for name in field_types()
            if name.startswith("diag_")}
    return {"PPOConfig": (PPOConfig, flat), "SFTConfig": (SFTConfig, None),
            "RewardModelConfig": (RewardModelConfig, None), "GRPOConfig": (GRPOConfig, None),
            "RLHFConfig": (RLHFConfig, None)}


def _config_reference(match: re.Match) -> str:
    from proximo.fielddoc import reference_markdown

    cls, flat = _config_classes()[match.group(1)]
    return reference_markdown(cls, flat)


def _cli_reference() -> str:
    from proximo.cli import build_parser
    from proximo.fielddoc import table_cell, subcommand_parsers

    out = []
    for name, parser in subcommand_parsers(build_parser()).items():
        if name == "proximo":
            continue
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        out.append(f"### `{name}`\n")
        rows = []
        config_group = None
        for group in parser._action_groups:
            if "fields" in (group.title or ""):
                config_group = group.title
                continue
            for action in group._group_actions:
                if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                    continue
                flag = ", ".join(action.option_strings) or action.dest
                text = table_cell((action.help or "").replace("%%", "%"))
                rows.append(f"| `{flag}` | {text} |")
        if sub is not None:
            out.append("Subcommands: " + ", ".join(f"`{name} {s}`" for s in sub.choices) + ".\n")
        if rows:
            out.append("| argument | meaning |\n|---|---|\n" + "\n".join(rows) + "\n")
        if config_group:
            cls = "PPOConfig" if config_group.startswith("config") else config_group.split()[0]
            out.append(f"Plus one flag per {cls} field: see [Configuration](configuration.md#{cls.lower()}).\n")
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    """Expand the generated-reference markers."""
    markdown = re.sub(r"<!-- config-reference: (\w+) -->", _config_reference, markdown)
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", _cli_reference())
    return markdown
