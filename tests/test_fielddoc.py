"""Every config field and every CLI flag says what it means, from one place (proximo/fielddoc.py)."""
import dataclasses

import pytest

from proximo.cli import build_parser
from proximo.config import PPOConfig, field_types
from proximo.diagnostics import RULES
from proximo.errors import ConfigError
from proximo.fielddoc import choices, doc, meaning, reference_markdown, subcommand_parsers, undocumented_flags
from proximo.llm.config import DTYPE_NAMES, GRPOConfig, RewardModelConfig, RLHFConfig, SFTConfig

CONFIGS = [PPOConfig, SFTConfig, RewardModelConfig, GRPOConfig, RLHFConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_one_line_meaning(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not meaning(cls, f.name)]
    assert missing == [], f"{cls.__name__} fields without a meaning: {missing}"
    assert all("\n" not in meaning(cls, f.name) for f in dataclasses.fields(cls))


def test_thresholds_have_their_reasons():
    thresholds = RULES.config_class()
    flat = [name for name in field_types() if name.startswith("diag_")]
    assert flat and all(meaning(thresholds, name[5:]) for name in flat)


def test_a_subclass_default_keeps_the_base_meaning():
    # SFTConfig re-declares learning_rate with its own default only: its meaning is _LLMConfig's
    assert SFTConfig().learning_rate == 1e-3 and meaning(SFTConfig, "learning_rate") == meaning(GRPOConfig,
                                                                                                "learning_rate")


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_a_bad_choice_names_the_field_its_choices_and_its_meaning(cls):
    fields = [f.name for f in dataclasses.fields(cls) if choices(cls, f.name)]
    assert fields, f"{cls.__name__} has no choice fields"
    for name in fields:
        with pytest.raises(ConfigError) as info:
            cls(**{name: "not-a-choice"})
        text = str(info.value)
        assert text.startswith(f"{name} must be one of {', '.join(choices(cls, name))}; got 'not-a-choice'"), text
        assert meaning(cls, name) in text


def test_dtype_choices_are_the_precision_table():
    from proximo.llm.precision import DTYPES
    assert DTYPE_NAMES == tuple(DTYPES)


def test_every_flag_of_every_command_says_what_it_means():
    # The count reported for issue 26: before it, `proximo train --help` had 59 of 82 flags that said only
    # their default and `proximo llm grpo --help` 43 of 53.
    parsers = subcommand_parsers(build_parser())
    assert {"proximo train", "proximo llm grpo", "proximo sweep"} <= set(parsers)
    missing = {name: undocumented_flags(p) for name, p in parsers.items() if undocumented_flags(p)}
    assert missing == {}


def test_help_shows_meaning_choices_and_default():
    text = subcommand_parsers(build_parser())["proximo llm grpo"].format_help()
    assert "token, or GSPO's ratio per sequence (token | sequence); default token" in " ".join(text.split())
    train = " ".join(subcommand_parsers(build_parser())["proximo train"].format_help().split())
    assert "(clip | adaptive_kl | fixed_kl | none); default clip" in train
    assert "default 64,64" in train  # a list default as the flag spells it


def test_undocumented_flags_counts_a_bare_default():
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", help="default 3")
    parser.add_argument("--b")
    parser.add_argument("--c", help="the c of it; default 3")
    assert undocumented_flags(parser) == ["--a", "--b"]


def test_doc_needs_one_line():
    with pytest.raises(ValueError):
        doc(1, "")
    with pytest.raises(ValueError):
        doc(1, "two\nlines")


def test_reference_lists_every_field():
    thresholds = RULES.config_class()
    flat = {name: (thresholds, name[5:], getattr(thresholds(), name[5:])) for name in field_types()
            if name.startswith("diag_")}
    text = reference_markdown(PPOConfig, flat)
    for name in field_types():
        assert f"| `{name}` | `--{name.replace('_', '-')}` |" in text
    assert "| `diag` |" not in text  # the nested config is listed by its flat fields
    grpo = reference_markdown(GRPOConfig)
    assert "One of: `grpo`, `bnpo`, `dr_grpo`, `dapo`." in grpo


if __name__ == "__main__":  # python tests/test_fielddoc.py: the count of flags without a meaning, per command
    for command, command_parser in subcommand_parsers(build_parser()).items():
        options = [a for a in command_parser._actions if a.option_strings and a.dest != "help"]
        print(f"{command}: {len(undocumented_flags(command_parser))} of {len(options)} flags without a meaning")
