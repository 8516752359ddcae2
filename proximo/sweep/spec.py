"""What a sweep runs: envs x grid x seeds, parsed from flags or a sweep file, each trial a validated config."""
from __future__ import annotations

import difflib
import itertools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proximo.config import field_types, load_preset_file, make_config, read_mapping
from proximo.errors import ConfigError

# Fields a grid may not vary: the seed has its own flag, and these only change bookkeeping.
NOT_GRIDDABLE = ("seed",)
SPEC_VERSION = 1


def config_field(name: str, what: str = "grid") -> str:
    """The PPOConfig field a user wrote (dashes allowed), or a ConfigError naming the closest fields."""
    fields = list(field_types())
    normal = name.strip().replace("-", "_")
    if normal in fields:
        return normal
    close = difflib.get_close_matches(normal, fields, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see `proximo train --help` for the fields"
    raise ConfigError(f"{what} on unknown config field {name.strip()!r}; {hint}")


def parse_value(name: str, text: str, what: str = "grid") -> Any:
    """One value of config field `name` from text, typed as the field is (net_arch as 64x64)."""
    hint = field_types()[name]
    text = text.strip()
    args = typing.get_args(hint)
    if type(None) in args:
        if text.lower() in ("none", "null", "off"):
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typing.get_origin(hint) is list:
            return [int(part) for part in re.split(r"[x\s]+", text) if part]
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        return str(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(hint, "widths like 64x64")
        raise ConfigError(f"{what} {name}: {text!r} is not {kind} (the type of {name})") from None


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """'clip_range=0.1,0.2' -> ('clip_range', [0.1, 0.2]); net_arch values are written 64x64."""
    if "=" not in text:
        raise ConfigError(f"--grid {text!r} needs the form field=v1,v2 (e.g. --grid clip_range=0.1,0.2)")
    name, _, values = text.partition("=")
    name = config_field(name)
    if name in NOT_GRIDDABLE:
        raise ConfigError(f"--grid {name}: give seeds with --seeds (e.g. --seeds 1-3), not a grid")
    parts = [part for part in values.split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"--grid {name} has no values; give at least one, e.g. --grid {name}=V1,V2")
    parsed = [parse_value(name, part) for part in parts]
    duplicates = sorted({str(v) for v in parsed if parsed.count(v) > 1})
    if duplicates:
        raise ConfigError(f"--grid {name} lists {', '.join(duplicates)} more than once; give each value once")
    return name, parsed


def parse_seeds(text: str | int | list) -> list[int]:
    """'1-3' -> [1, 2, 3]; '1,4,7' -> [1, 4, 7]; '5' -> [5] (a list or int from a sweep file works too)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return [text]
    if isinstance(text, list):
        parts = [str(part) for part in text]
    else:
        parts = [part for part in str(text).split(",") if part.strip()]
    seeds: list[int] = []
    for part in parts:
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ConfigError(f"--seeds {text!r}: expected seeds like 1-3 or 1,2,5 (non-negative integers)")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ConfigError(f"--seeds {part.strip()!r} counts down; write the range low-high, e.g. {high}-{low}")
        seeds.extend(range(low, high + 1))
    if not seeds:
        raise ConfigError("--seeds is empty; give seeds like 1-3")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} lists a seed more than once")
    return seeds


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: an env, the grid values it takes, a seed and its full config."""

    name: str
    env_id: str
    settings: dict[str, Any]
    seed: int
    config: dict[str, Any]

    @property
    def setting(self) -> str:
        """The grid values as text, e.g. 'clip_range=0.1,objective=clip' ('base' without a grid)."""
        return setting_label(self.settings)


def setting_label(settings: dict[str, Any]) -> str:
    """Grid values as 'field=value,...' in grid order; 'base' when nothing varies."""
    if not settings:
        return "base"
    return ",".join(f"{key}={_format(value)}" for key, value in settings.items())


def _format(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _slug(text: str) -> str:
    """Folder-safe text: keep letters, digits and . = , + - _; everything else becomes _."""
    return re.sub(r"[^A-Za-z0-9.=,+_-]", "_", text)


@dataclass
class SweepSpec:
    """Everything that decides a sweep's trials: envs, base config (preset, preset file, flags), grid, seeds.

    `settings` is an optional explicit list of named settings (the paper's Table 1); without it the
    settings are the grid's cross product.
    """

    envs: list[str]
    preset: str | None = None
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [1])
    settings: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not self.envs:
            raise ConfigError("a sweep needs at least one env id, e.g. `proximo sweep CartPole-v1 ...`")
        if "seed" in self.base:
            raise ConfigError("give seeds with --seeds (e.g. --seeds 1-3), not --seed, in a sweep")

    def setting_list(self) -> list[dict[str, Any]]:
        """Each setting's grid values, in order: the explicit list, or the grid's cross product."""
        if self.settings is not None:
            return [dict(s) for s in self.settings]
        names = list(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))]

    def trials(self) -> list[Trial]:
        """Every trial, each config built and validated now (a bad value fails before anything starts)."""
        trials = []
        for env_id in self.envs:
            for settings in self.setting_list():
                for seed in self.seeds:
                    label = setting_label(settings)
                    name = _slug(f"{env_id}__{label}__s{seed}")
                    try:
                        config = make_config(self.preset, env_id, **{**self.base, **settings, "seed": seed})
                    except ConfigError as exc:
                        raise ConfigError(f"setting {label} (seed {seed}): {exc}") from None
                    trials.append(Trial(name, env_id, settings, seed, config.to_dict()))
        names = [t.name for t in trials]
        if len(set(names)) != len(names):
            raise ConfigError("two trials share one folder name (an env id listed twice?); list each env once")
        return trials

    def to_dict(self) -> dict[str, Any]:
        """JSON form, saved as DIR/sweep.json so a re-run can tell it is the same sweep."""
        return {"version": SPEC_VERSION, "envs": self.envs, "preset": self.preset, "base": self.base,
                "grid": self.grid, "seeds": self.seeds, "settings": self.settings}

    @classmethod
    def from_file(cls, path: str | Path) -> "SweepSpec":
        """A sweep file (YAML or JSON): envs, preset, preset_file, config (fixed fields), grid, seeds."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep file {path} does not exist")
        data = read_mapping(path, "sweep file")
        allowed = {"envs", "preset", "preset_file", "config", "grid", "seeds"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"sweep file {path} has unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        envs = data.get("envs", [])
        envs = [envs] if isinstance(envs, str) else list(envs)
        base = load_preset_file(Path(path.parent, data["preset_file"])) if data.get("preset_file") else {}
        for key, value in (data.get("config") or {}).items():
            base[config_field(key, "config")] = value
        grid: dict[str, list[Any]] = {}
        for key, values in (data.get("grid") or {}).items():
            name = config_field(key)
            values = values if isinstance(values, list) else [values]
            if not values:
                raise ConfigError(f"sweep file {path}: grid {name} has no values; give at least one")
            grid[name] = [parse_value(name, v) if isinstance(v, str) and field_types()[name] is not str else v
                          for v in values]
        return cls(envs=envs, preset=data.get("preset"), base=base, grid=grid,
                   seeds=parse_seeds(data.get("seeds", [1])))
