"""Health rules over per-update training statistics: PPO's known failure modes, named while a run trains.

Each rule reads the history of update rows (the dicts the trainers log: approx_kl, entropy, value_loss, ...;
for language-model runs reward_mean, kl_ref, response_length) and either stays silent or returns Evidence:
which updates, which values, against which threshold. A rule only looks at rows up to the update it judges,
so the live monitor during training and `proximo doctor` afterwards reach the same verdicts.

Statistics are robust on purpose: levels are medians over a few updates and baselines are medians over a
longer window before them, so one noisy minibatch neither fires a rule nor hides a trend.

A rule is one `Rule` definition registered in RULES: its check, the threshold fields it owns (defaults, valid
ranges and the reasons for their values as field metadata), the panels and threshold lines `proximo doctor`
draws for it, and its colour. DiagnosticsConfig, the `diag_<name>` config fields and CLI flags, and the doctor's
report are all derived from the registered rules.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TextIO

from proximo.errors import ConfigError
from proximo.metrics import read_jsonl


# threshold fields --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bound:
    """The valid range of a threshold, and how an error message says it."""

    test: Callable[[float], bool]
    phrase: str


NON_NEGATIVE = Bound(lambda v: v >= 0, "must not be negative")
AT_LEAST_ONE = Bound(lambda v: v >= 1, "must be at least 1")
POSITIVE = Bound(lambda v: v > 0 and math.isfinite(v), "must be a positive finite number")
FRACTION = Bound(lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]")
CORRELATION = Bound(lambda v: -1.0 <= v <= 1.0, "must lie in [-1, 1]")


def threshold(default: int | float, reason: str, valid: Bound) -> dataclasses.Field:
    """A threshold field: its default (whose type is the field's), why it has that value, and its valid range."""
    return field(default=default, metadata={"reason": reason, "valid": valid})


# Fields of the monitor itself, shared by the rules.
MONITOR_FIELDS: dict[str, dataclasses.Field] = {
    "warmup": threshold(10, "Updates whose statistics only set baselines: the first updates of a run are dominated "
                        "by the random initial policy and an untrained critic, so comparisons against them would "
                        "fire on every healthy run.", NON_NEGATIVE),
    "window": threshold(20, "Updates in the baseline window (value loss, gradient norm, explained variance): long "
                        "enough that its median ignores a few outliers, short enough to follow a schedule that "
                        "changes the scale over a run.", AT_LEAST_ONE),
    "recent": threshold(5, "Updates whose median is the \"current level\": 5 smooths single-minibatch noise yet "
                        "reacts in a few updates.", AT_LEAST_ONE),
    "cooldown": threshold(10, "Healthy updates in a row before a rule that fired may warn again: one warning per "
                          "episode of trouble.", NON_NEGATIVE),
}


# history -----------------------------------------------------------------------------------------

class History:
    """Per-update scalar series, keyed by statistic name; a missing or non-finite value is NaN."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.series: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self.updates)

    def append(self, row: dict[str, Any]) -> None:
        """Add one update's row (non-numeric entries such as ratio_hist are ignored)."""
        n = len(self.updates)
        self.updates.append(int(row.get("update", n + 1)))
        for key, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
                continue
            column = self.series.get(key)
            if column is None:
                column = self.series[key] = [math.nan] * n
            column.append(math.nan if value is None else float(value))
        for column in self.series.values():
            if len(column) == n:
                column.append(math.nan)

    def has(self, key: str) -> bool:
        """True when the key has at least one finite value."""
        return any(math.isfinite(v) for v in self.series.get(key, ()))

    def values(self, key: str, start: int, stop: int) -> list[tuple[int, float]]:
        """(update, value) pairs of rows [start, stop) with finite values."""
        column = self.series.get(key, [])
        start = max(start, 0)
        return [(self.updates[i], column[i]) for i in range(start, min(stop, len(column)))
                if math.isfinite(column[i])]

    def last(self, key: str) -> float:
        """The newest value (NaN when missing)."""
        column = self.series.get(key)
        return column[-1] if column else math.nan


def median(values: Iterable[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    data = sorted(v for v in values if math.isfinite(v))
    if not data:
        return math.nan
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else 0.5 * (data[mid - 1] + data[mid])


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def _span(pairs: list[tuple[int, float]]) -> str:
    if not pairs:
        return "no updates"
    first, last = pairs[0][0], pairs[-1][0]
    return f"update {first}" if first == last else f"updates {first}-{last}"


@dataclass
class Evidence:
    """Why a rule fired at one update: the statistic, its value, the threshold and the values behind it."""

    update: int
    statistic: str
    value: float
    threshold: float
    updates: list[int]
    values: list[float]
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats as strings)."""
        clean = lambda v: v if math.isfinite(v) else str(v)  # noqa: E731
        return {"update": self.update, "statistic": self.statistic, "value": clean(self.value),
                "threshold": clean(self.threshold), "updates": self.updates,
                "values": [clean(v) for v in self.values], "detail": self.detail}


def _evidence(history: History, statistic: str, value: float, threshold: float,
              pairs: list[tuple[int, float]], detail: str) -> Evidence:
    return Evidence(history.updates[-1], statistic, value, threshold, [u for u, _ in pairs],
                    [round(v, 6) for _, v in pairs], detail)


@dataclass
class Context:
    """What a rule may know beyond the rows: the planned number of updates of the run (None if unknown)."""

    total_updates: int | None = None


# rules and their registry ------------------------------------------------------------------------

Check = Callable[[History, "DiagnosticsConfig", Context], "Evidence | None"]


@dataclass(frozen=True)
class Panel:
    """A chart `proximo doctor` draws: one logged statistic over the updates, with threshold lines."""

    metric: str
    title: str
    log: bool = False                          # log-scale y axis
    limits: tuple[float, float] | None = None  # a fixed y range (None: fit the data)
    lines: tuple[str, ...] = ()                # threshold fields drawn as dashed lines at their values


@dataclass
class Rule:
    """One failure mode, whole: its check, the thresholds it owns, its fix, and how the doctor draws it."""

    name: str
    title: str
    metric: str        # the statistic the rule judges; its episodes are marked on that panel
    fix: str
    color: str         # its marks and legend entry in the HTML report
    check: Check
    # name -> threshold(...): fields of DiagnosticsConfig, set as diag_<name> (config key and CLI flag)
    thresholds: dict[str, dataclasses.Field] = field(default_factory=dict)
    panels: tuple[Panel, ...] = ()  # charts of its evidence; the learning curve is drawn for every run
    applies: Callable[[History], bool] | None = None  # whether a run logged what it judges (default: metric)
    cross_check: Callable[["DiagnosticsConfig"], None] | None = None  # its thresholds against others' (ConfigError)

    def reason(self) -> str:
        """The documented reasons of this rule's threshold values."""
        return " ".join(f.metadata["reason"] for f in self.thresholds.values())

    def applicable(self, history: History) -> bool:
        """True when the run logged the statistics this rule judges."""
        return self.applies(history) if self.applies is not None else history.has(self.metric)

    @property
    def marks(self) -> tuple[str, ...]:
        """The statistics on whose panels this rule's episodes are marked."""
        return (self.metric, *(panel.metric for panel in self.panels))


class RuleRegistry:
    """The rules in the order they judge each update, also looked up by name."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: dict[str, Rule] = {}
        self._config_class: type | None = None
        for rule in rules:
            self.register(rule)

    def __iter__(self) -> Iterator[Rule]:
        return iter(list(self._rules.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._rules

    def __getitem__(self, name: str) -> Rule:
        return self._rules[name]

    def register(self, rule: Rule) -> Rule:
        """Add a rule, judged after the others; its thresholds join every DiagnosticsConfig built afterwards."""
        fields = self.threshold_fields()
        problems = [f"a rule named {rule.name!r} is registered already"] if rule.name in self._rules else []
        problems += [f"threshold {name!r} is a field already" for name in rule.thresholds if name in fields]
        problems += [f"threshold {name!r} would hide DiagnosticsConfig.{name}" for name in rule.thresholds
                     if hasattr(DiagnosticsConfig, name)]
        problems += [f"threshold {name!r} is not made by threshold()" for name, f in rule.thresholds.items()
                     if "valid" not in f.metadata or f.default is dataclasses.MISSING]
        lines = {line for panel in rule.panels for line in panel.lines}
        problems += [f"panel line {line!r} is no threshold field"
                     for line in sorted(lines - {*fields, *rule.thresholds})]
        if not rule.color:
            problems.append("it has no colour")
        if problems:
            raise ValueError(f"cannot register rule {rule.name!r}: {'; '.join(problems)}")
        self._rules[rule.name] = rule
        self._config_class = None
        return rule

    def unregister(self, name: str) -> Rule:
        """Remove a rule (a test's or a plugin's); configs built afterwards lack its thresholds."""
        rule = self._rules.pop(name)
        self._config_class = None
        return rule

    def threshold_fields(self) -> dict[str, dataclasses.Field]:
        """The monitor's fields and every rule's thresholds, in order: the fields of DiagnosticsConfig."""
        fields = dict(MONITOR_FIELDS)
        for rule in self._rules.values():
            fields.update(rule.thresholds)
        return fields

    def config_class(self) -> type:
        """The DiagnosticsConfig dataclass of the rules registered now."""
        if self._config_class is None:
            spec = [(name, type(f.default), field(default=f.default, metadata=f.metadata))
                    for name, f in self.threshold_fields().items()]
            self._config_class = dataclasses.make_dataclass(
                "DiagnosticsConfig", spec, bases=(DiagnosticsConfig,),
                namespace={"rules": tuple(self._rules.values()), "__module__": __name__})
        return self._config_class


class DiagnosticsConfig:
    """Thresholds of the health rules: a dataclass of the monitor's fields and each registered rule's thresholds.
    PPOConfig nests one as `diag`; config files, presets and flags set its fields as `diag_<name>`."""

    rules: tuple[Rule, ...] = ()  # the rules whose thresholds the built dataclass holds

    def __new__(cls, *args: Any, **kwargs: Any) -> "DiagnosticsConfig":
        # Built from the registry at call time, so a rule registered later (a plugin, a test) joins every
        # config made after it.
        return super().__new__(RULES.config_class() if cls is DiagnosticsConfig else cls)

    def __post_init__(self) -> None:
        self.validate()

    def __reduce__(self) -> tuple:
        # By value: the dataclass behind an instance is built at run time, so pickle cannot name it.
        return DiagnosticsConfig.from_dict, (dataclasses.asdict(self),)

    def validate(self) -> None:
        """Raise ConfigError naming the first threshold of the wrong type or out of range; floats normalized."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or f.type is int and not isinstance(value, int):
                raise ConfigError(f"diag_{f.name} must be of type {f.type.__name__}, got {value!r}")
            setattr(self, f.name, f.type(value))
            bound = f.metadata["valid"]
            if not bound.test(value):
                raise ConfigError(f"diag_{f.name} {bound.phrase}, got {value}")
        for rule in self.rules:
            if rule.cross_check is not None:
                rule.cross_check(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DiagnosticsConfig":
        """Thresholds by name (missing ones keep their defaults), rejecting unknown names."""
        built = RULES.config_class() if cls is DiagnosticsConfig else cls
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(built)})
        if unknown:
            raise ConfigError(f"unknown config field(s) {[f'diag_{name}' for name in unknown]}; "
                              "see `proximo train --help`")
        return built(**data)

    @classmethod
    def from_object(cls, source: Any, strict: bool = True) -> "DiagnosticsConfig":
        """The thresholds of a run config: a PPOConfig, its to_dict() or a config.json (nested `diag`, with any
        flat `diag_<name>` keys on top, as flags spell them and runs written before the nesting stored them),
        or a config without either (an LLM run's), which keeps the defaults. Not strict: names no registered
        rule has are ignored."""
        data = source if isinstance(source, Mapping) else getattr(source, "__dict__", {})
        nested = data.get("diag")
        if isinstance(nested, DiagnosticsConfig):
            nested = dataclasses.asdict(nested)
        elif nested is not None and not isinstance(nested, Mapping):
            raise ConfigError(f"diag must be a mapping of threshold names to values, got {nested!r}")
        flat = {key[len("diag_"):]: value for key, value in data.items() if key.startswith("diag_")}
        values = {**(nested or {}), **flat}
        if not strict:
            known = {f.name for f in threshold_fields()}
            values = {name: value for name, value in values.items() if name in known}
        return cls.from_dict(values)


def threshold_fields() -> tuple[dataclasses.Field, ...]:
    """The fields (name, type, default, metadata reason and valid) of a DiagnosticsConfig built now."""
    return dataclasses.fields(RULES.config_class())


# checks ------------------------------------------------------------------------------------------

def median_check(key: str, limit: str, above: bool, over: str = "recent", quorum: int | None = None,
                 ready: Callable[[History, "DiagnosticsConfig"], bool] | None = None) -> Check:
    """A check that fires when the median of `key` over the last diag_<over> updates lies above (or below)
    threshold `limit`, given at least diag_recent values (or `quorum`, if fewer) and `ready` (when given)."""
    op = ">" if above else "<"

    def check(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
        if not h.has(key) or ready is not None and not ready(h, cfg):
            return None
        n = len(h)
        pairs = h.values(key, n - getattr(cfg, over), n)
        level, bound = median(v for _, v in pairs), getattr(cfg, limit)
        needed = cfg.recent if quorum is None else min(cfg.recent, quorum)
        if len(pairs) >= needed and (level > bound if above else level < bound):
            return _evidence(h, f"median {key}", level, bound, pairs,
                             f"median {key} {_fmt(level)} over {_span(pairs)} {op} diag_{limit} {bound}")
        return None
    return check


def first_evidence(*checks: Check) -> Check:
    """A check that returns the evidence of the first of `checks` that fires."""
    def check(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
        return next((e for e in (c(h, cfg, ctx) for c in checks) if e is not None), None)
    return check


def _kl_jump(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    key = "approx_kl"
    n = len(h)
    latest = h.last(key)
    baseline = h.values(key, n - 1 - cfg.window, n - 1)
    if len(baseline) >= cfg.recent and math.isfinite(latest):
        base = median(v for _, v in baseline)
        limit = max(5 * cfg.kl_max, cfg.kl_spike_factor * base)
        if latest > limit:
            return _evidence(h, key, latest, limit, baseline[-cfg.recent:] + [(h.updates[-1], latest)],
                             f"{key} {_fmt(latest)} at update {h.updates[-1]} > max(5 x diag_kl_max, "
                             f"{cfg.kl_spike_factor:g} x median {_fmt(base)} of {_span(baseline)})")
    return None


def _entropy_collapse(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    key = "entropy"
    n = len(h)
    if not h.has(key):
        return None
    start_pairs = h.values(key, 0, 3)
    recent = h.values(key, n - cfg.recent, n)
    if len(start_pairs) < 3 or len(recent) < cfg.recent or n <= 3:
        return None
    start = median(v for _, v in start_pairs)
    # a drop of (1 - ratio) of the starting nats; also meaningful for Gaussian entropies that turn negative
    limit = start - (1.0 - cfg.entropy_collapse) * abs(start)
    level = median(v for _, v in recent)
    if not level < limit:
        return None
    detail = (f"median {key} {_fmt(level)} over {_span(recent)} fell below {_fmt(limit)} "
              f"({cfg.entropy_collapse:g} of its start {_fmt(start)})")
    if not ctx.total_updates or n <= cfg.entropy_early * ctx.total_updates:
        return _evidence(h, f"median {key}", level, limit, recent,
                         detail + f" within the first {cfg.entropy_early:.0%} of the run")
    # Late in a run a low entropy is usually convergence, unless the policy stopped moving altogether while
    # its learning rate is still on: a deterministic policy has ratios of exactly 1 and cannot learn again.
    kl = median(v for _, v in h.values("approx_kl", n - cfg.recent, n))
    if kl < FROZEN_KL and not _lr_annealed(h):
        return _evidence(h, f"median {key}", level, limit, recent,
                         detail + f", and the policy no longer moves (median approx_kl {_fmt(kl)}): it collapsed "
                         "to a deterministic policy")
    return None


FROZEN_KL = 1e-7  # nats per update: float32 rounding of log-probs, i.e. the policy did not change


def _growth_rule(key: str, factor_field: str) -> Check:
    def check(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
        n = len(h)
        if not h.has(key):
            return None
        latest = h.last(key)
        if math.isinf(latest):  # NaN means "not logged"; an infinite value is a blow-up by itself
            return Evidence(h.updates[-1], key, latest, math.inf, [h.updates[-1]], [latest],
                            f"{key} is {latest} at update {h.updates[-1]}")
        if n < cfg.warmup + cfg.recent:
            return None
        factor = getattr(cfg, factor_field)
        recent = h.values(key, n - cfg.recent, n)
        baseline = h.values(key, max(cfg.warmup, n - cfg.recent - cfg.window), n - cfg.recent)
        if len(recent) < cfg.recent or len(baseline) < cfg.recent:
            return None
        # sustained: every recent update must exceed the limit, so one heavy-tailed update never fires
        level, base = min(v for _, v in recent), median(v for _, v in baseline)
        # The baseline is never below the run's own level right after the warm-up: a critic that fits
        # near-constant returns (a solved CartPole) drops its loss 10^4-fold, and the first failed episode
        # after that is a return to the run's normal scale, not a blow-up.
        early = h.values(key, cfg.warmup, min(cfg.warmup + cfg.window, n - cfg.recent))
        early_level = median(v for _, v in early)
        source = f"its median {_fmt(base)} over {_span(baseline)}"
        if math.isfinite(early_level) and early_level > base:
            base, source = early_level, f"its median {_fmt(early_level)} over {_span(early)}, after the warm-up"
        if base > 0 and level > factor * base:
            return _evidence(h, f"min {key}", level, factor * base, recent,
                             f"{key} stayed above {_fmt(factor * base)} ({factor:g} x {source}) in every one of "
                             f"{_span(recent)} (lowest {_fmt(level)})")
        return None
    return check


def _ev_stuck(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    key = "explained_variance"
    n = len(h)
    if not h.has(key) or n < cfg.warmup + 2 * cfg.window:
        return None
    # "Stuck" means low in two consecutive windows after the warm-up: healthy cartpole-preset critics
    # sometimes explain nothing for ~20 updates before they lock on (median EV -0.004 over updates 11-30,
    # then 0.97 over 31-50), so one window of low EV is a slow start, two are a critic that fails.
    earlier = h.values(key, n - 2 * cfg.window, n - cfg.window)
    pairs = h.values(key, n - cfg.window, n)
    if len(pairs) < cfg.recent or len(earlier) < cfg.recent:
        return None
    level, before = median(v for _, v in pairs), median(v for _, v in earlier)
    if not (level < cfg.ev_min and before < cfg.ev_min):
        return None
    # When the critic's error already fell to 1% of where it started, a low EV only says the returns
    # barely vary (a solved task), not that the critic fails.
    if h.has("value_loss"):
        start = median(v for _, v in h.values("value_loss", 0, 3))
        now = median(v for _, v in h.values("value_loss", max(cfg.warmup, n - cfg.window), n))
        if math.isfinite(start) and math.isfinite(now) and now < 0.01 * start:
            return None
    return _evidence(h, f"median {key}", level, cfg.ev_min, pairs,
                     f"median {key} {_fmt(level)} over {_span(pairs)} and {_fmt(before)} over {_span(earlier)} "
                     f"< diag_ev_min {cfg.ev_min}")


def _lr_annealed(h: History) -> bool:
    if not h.has("learning_rate"):
        return False
    first = next(v for _, v in h.values("learning_rate", 0, len(h)))
    return h.last("learning_rate") < 0.1 * first


def _entropy_collapsed(h: History, cfg: DiagnosticsConfig) -> bool:
    start = median(v for _, v in h.values("entropy", 0, 3))
    now = median(v for _, v in h.values("entropy", len(h) - cfg.recent, len(h)))
    return math.isfinite(start) and math.isfinite(now) and now < start - (1.0 - cfg.entropy_collapse) * abs(start)


def _clip_low_ready(h: History, cfg: DiagnosticsConfig) -> bool:
    """Whether a clip fraction near 0 can mean a too small step: not before the baselines, not when the
    learning rate is annealed (meant to stop moving the policy), and not after an entropy collapse (a
    deterministic policy has ratios of exactly 1: the cause is the collapse)."""
    return len(h) >= cfg.warmup + cfg.window and not _lr_annealed(h) and not _entropy_collapsed(h, cfg)


REWARD_KEYS = ("reward_mean", "reward")  # the mean reward per update, as LLM trainers name it


def reward_key(h: History) -> str | None:
    """The key under which the rows log the mean reward (None for classic runs)."""
    return next((key for key in REWARD_KEYS if h.has(key)), None)


def _kl_per_response(h: History, start: int, stop: int) -> list[tuple[int, float]]:
    """KL to the reference in nats per response: kl_ref_sequence when logged, else the per-token
    kl_ref (how the LLM trainers log it) times the mean response length."""
    if h.has("kl_ref_sequence"):
        return h.values("kl_ref_sequence", start, stop)
    if not h.has("kl_ref"):
        return []
    if not h.has("response_length"):
        return h.values("kl_ref", start, stop)
    lengths = dict(h.values("response_length", start, stop))
    return [(update, kl * lengths[update]) for update, kl in h.values("kl_ref", start, stop) if update in lengths]


def _reward_hacking(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    n = len(h)
    key = reward_key(h)
    if key is None or n < cfg.warmup + cfg.recent:
        return None
    first = h.values(key, 0, cfg.recent)
    recent = h.values(key, n - cfg.recent, n)
    reward_start, reward_now = median(v for _, v in first), median(v for _, v in recent)
    if not reward_now > reward_start:
        return None
    reasons, pairs = [], list(recent)
    value, threshold, statistic = math.nan, math.nan, ""
    kl_pairs = _kl_per_response(h, n - cfg.recent, n)
    if kl_pairs:
        kl_now = median(v for _, v in kl_pairs)
        if kl_now > cfg.kl_ref_max:
            reasons.append(f"median KL to the reference {_fmt(kl_now)} nats per response > diag_kl_ref_max "
                           f"{cfg.kl_ref_max}")
            value, threshold, statistic, pairs = kl_now, cfg.kl_ref_max, "median KL per response", kl_pairs
    if h.has("response_length"):
        len_start = median(v for _, v in h.values("response_length", 0, cfg.recent))
        len_pairs = h.values("response_length", n - cfg.recent, n)
        len_now = median(v for _, v in len_pairs)
        if len_start > 0 and abs(len_now / len_start - 1.0) > cfg.length_drift:
            reasons.append(f"median response_length {_fmt(len_now)} drifted {len_now / len_start - 1:+.0%} "
                           f"from {_fmt(len_start)} (limit +-{cfg.length_drift:.0%})")
            if not statistic:
                value, threshold, statistic, pairs = (abs(len_now / len_start - 1.0), cfg.length_drift,
                                                      "response_length drift", len_pairs)
    if not reasons:
        return None
    return _evidence(h, statistic, value, threshold, pairs,
                     f"{key} rose from {_fmt(reward_start)} ({_span(first)}) to {_fmt(reward_now)} "
                     f"({_span(recent)}) while " + " and ".join(reasons))


def _reward_logged(h: History) -> bool:
    return reward_key(h) is not None


def _clip_band_ordered(cfg: DiagnosticsConfig) -> None:
    if cfg.clip_low >= cfg.clip_high:
        raise ConfigError(f"diag_clip_low ({cfg.clip_low}) must be below diag_clip_high ({cfg.clip_high})")


CLIP_FRACTION_TITLE = "clip fraction: share of samples outside [1-eps, 1+eps]"

RULES = RuleRegistry([
    Rule("kl_spike", "KL spike / policy collapse", "approx_kl",
         "Lower learning_rate (e.g. 3x smaller) or n_epochs, or set target_kl (e.g. 0.02) to stop an update's "
         "epochs early.", "#d62728",
         # a KL that is huge from the start fires within 3 updates; a single huge update fires at once
         first_evidence(median_check("approx_kl", "kl_max", above=True, quorum=3), _kl_jump),
         thresholds={
             "kl_max": threshold(0.05, "Mean KL(old || new) per update (nats, k3 estimator). Healthy clipped PPO "
                                 "moves about 0.001-0.03 per update (cartpole preset, seeds 1-5: median of 5 "
                                 "updates at most 0.017); a median above 0.05 means the policy leaves the region "
                                 "its samples describe.", POSITIVE),
             "kl_spike_factor": threshold(10.0, "One update whose KL exceeds this multiple of the run's median KL "
                                          "and 5 x kl_max (a quarter nat; healthy cartpole-preset updates peaked at "
                                          "0.089) is a collapse-sized jump.", POSITIVE)},
         panels=(Panel("approx_kl", "KL(old || new) per update, k3 estimator (nats)", log=True, lines=("kl_max",)),)),
    Rule("entropy_collapse", "entropy collapsing early (or to a frozen policy)", "entropy",
         "Add an entropy bonus (ent_coef 0.001-0.01) or lower learning_rate so the policy keeps exploring.",
         "#9467bd", _entropy_collapse,
         thresholds={
             "entropy_collapse": threshold(0.1, "Entropy below this fraction of its starting value (a drop of 90% "
                                           "of the starting nats) early in a run means the policy turned nearly "
                                           "deterministic before it explored.", FRACTION),
             "entropy_early": threshold(0.25, "\"Early\": the first quarter of the planned updates; later, a low "
                                        "entropy is usually convergence.", FRACTION)},
         panels=(Panel("entropy", "policy entropy (nats)"),)),
    Rule("value_loss_blowup", "value loss blow-up", "value_loss",
         "Normalize rewards (normalize_reward true) or clip the value loss (clip_range_vf), and check the "
         "reward scale.", "#8c564b", _growth_rule("value_loss", "value_loss_factor"),
         thresholds={
             "value_loss_factor": threshold(100.0, "Value loss above this multiple of its baseline median in every "
                                            "recent update has blown up (critic diverging, returns changing scale). "
                                            "Healthy critics are spiky: on the cartpole preset (seeds 1-3) the value "
                                            "loss stayed up to 38x its baseline for 5 updates in a row while returns "
                                            "rose, hence 100x (and the baseline never drops below the run's level "
                                            "after the warm-up; see _growth_rule).", POSITIVE)},
         panels=(Panel("value_loss", "value loss", log=True),)),
    Rule("explained_variance_low", "explained variance stuck near 0", "explained_variance",
         "Help the critic: normalize_obs / normalize_reward true, a larger vf_coef, or a separate critic "
         "network (shared_network false).", "#e377c2", _ev_stuck,
         thresholds={
             "ev_min": threshold(0.1, "Median explained variance below this in two consecutive windows after the "
                                 "warm-up: the critic predicts returns no better than their mean, so the advantages "
                                 "are mostly noise (healthy critics reach 0.5-0.9 within tens of updates).",
                                 CORRELATION)},
         panels=(Panel("explained_variance", "explained variance of the value function", limits=(-1.0, 1.0),
                       lines=("ev_min",)),)),
    Rule("clip_fraction_low", "clip fraction near 0 (learning rate too small)", "clip_fraction",
         "Raise learning_rate (e.g. 3x) or n_epochs: the policy barely moves within each update.", "#17becf",
         median_check("clip_fraction", "clip_low", above=False, over="window", ready=_clip_low_ready),
         thresholds={
             "clip_low": threshold(0.001, "Median clip fraction below this: almost no sample reaches the clip band, "
                                   "the step size is too small for clipping to matter (healthy runs clip 2-20% of "
                                   "samples).", FRACTION)},
         panels=(Panel("clip_fraction", CLIP_FRACTION_TITLE, lines=("clip_low",)),)),
    Rule("clip_fraction_high", "clip fraction very high (learning rate too large)", "clip_fraction",
         "Lower learning_rate or n_epochs (or use larger batches) so fewer samples leave the clip band.", "#ff7f0e",
         median_check("clip_fraction", "clip_high", above=True),
         thresholds={
             "clip_high": threshold(0.4, "Median clip fraction above this: a large part of the batch gives no "
                                    "gradient and the step size does the clip's job. The cartpole preset's 20 epochs "
                                    "clip up to 29% (median of 5 updates) in healthy runs.", POSITIVE)},
         panels=(Panel("clip_fraction", CLIP_FRACTION_TITLE, lines=("clip_high",)),),
         cross_check=_clip_band_ordered),
    Rule("dead_advantages", "advantages with near-zero spread", "advantage_std",
         "Check the reward signal: rewards that are constant or tiny give no advantage; rescale them or enable "
         "normalize_reward.", "#7f7f7f", median_check("advantage_std", "adv_std_min", above=False),
         thresholds={
             "adv_std_min": threshold(1e-4, "Advantage spread (std, reward units) below this is at the level of "
                                      "float32 rounding of values of ~100 (about 1e-5), so per-minibatch "
                                      "normalization would amplify noise into \"signal\".", POSITIVE)},
         panels=(Panel("advantage_std", "advantage spread (std, before normalization)", log=True,
                       lines=("adv_std_min",)),)),
    Rule("grad_norm_explosion", "exploding gradient norm", "grad_norm",
         "Set max_grad_norm (0.5) and lower learning_rate; normalize observations (normalize_obs) if their "
         "scale is large.", "#bcbd22", _growth_rule("grad_norm", "grad_norm_factor"),
         thresholds={
             "grad_norm_factor": threshold(10.0, "Gradient norm (measured before clipping) above this multiple of "
                                           "its baseline median in every recent update; healthy cartpole-preset runs "
                                           "stayed within 2.5x, a diverging network grows by orders of magnitude.",
                                           POSITIVE)},
         panels=(Panel("grad_norm", "gradient norm (before clipping)", log=True),)),
    Rule("reward_hacking", "reward hacking (reward up, policy drifting from the reference)", "reward_mean",
         "Raise the KL penalty to the reference (kl_coef), stop earlier, or fix the reward model's weakness "
         "(e.g. a length bias).", "#2ca02c", _reward_hacking,
         thresholds={
             "kl_ref_max": threshold(10.0, "KL to the reference model (nats per response, summed over tokens) past "
                                     "which a rising reward is more likely exploitation of the reward model than "
                                     "better answers: e^10 is a 22000x likelihood ratio.", POSITIVE),
             "length_drift": threshold(0.5, "Relative drift of the mean response length from its start (0.5 = "
                                       "+-50%) that, with a rising reward, points at the policy gaming length rather "
                                       "than content.", POSITIVE)},
         panels=(Panel("kl_ref", "KL to the reference model", lines=("kl_ref_max",)),
                 Panel("response_length", "response length (tokens)")),
         applies=_reward_logged),
])
RULES_BY_NAME = RULES  # the registry looks rules up by name too; the older name stays for callers


# episodes and the live monitor --------------------------------------------------------------------

@dataclass
class Episode:
    """One stretch of trouble for one rule: from the update it fired until it stayed quiet for `cooldown`."""

    rule: str
    start_update: int
    start_step: int | None
    evidence: Evidence
    last_update: int
    fired_updates: list[int] = field(default_factory=list)
    closed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"rule": self.rule, "start_update": self.start_update, "start_step": self.start_step,
                "last_update": self.last_update, "fired_updates": len(self.fired_updates),
                "closed": self.closed, "evidence": self.evidence.to_dict()}


class HealthMonitor:
    """Feeds update rows through the rules; opens an episode (and warns once) when a rule starts firing."""

    def __init__(self, config: DiagnosticsConfig | None = None, total_updates: int | None = None,
                 rules: Iterable[Rule] | None = None) -> None:
        self.config = config or DiagnosticsConfig()
        self.context = Context(total_updates)
        # by default the rules whose thresholds the config holds: the registered ones when it was built
        self.rules = list(rules if rules is not None else self.config.rules)
        self._by_name = {rule.name: rule for rule in self.rules}
        self.history = History()
        self.episodes: list[Episode] = []
        self._open: dict[str, Episode] = {}
        self._quiet: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Any, total_updates: int | None = None) -> "HealthMonitor":
        """A monitor with the thresholds of a run config (see DiagnosticsConfig.from_object)."""
        return cls(DiagnosticsConfig.from_object(config), total_updates)

    def observe(self, row: dict[str, Any]) -> list[Episode]:
        """Judge one update's row; returns the episodes that start at this update (usually none)."""
        self.history.append(row)
        update = self.history.updates[-1]
        started = []
        for rule in self.rules:
            evidence = rule.check(self.history, self.config, self.context)
            episode = self._open.get(rule.name)
            if evidence is not None:
                self._quiet[rule.name] = 0
                if episode is None:
                    step = row.get("global_step")
                    episode = Episode(rule.name, update, int(step) if step is not None else None, evidence,
                                      update)
                    self._open[rule.name] = episode
                    self.episodes.append(episode)
                    started.append(episode)
                episode.last_update = update
                episode.fired_updates.append(update)
            elif episode is not None:
                self._quiet[rule.name] = self._quiet.get(rule.name, 0) + 1
                if self._quiet[rule.name] >= self.config.cooldown:
                    episode.closed = True
                    del self._open[rule.name]
        return started

    def observe_and_report(self, row: dict[str, Any], run_dir: Path | None = None, echo: bool = True,
                           stream: TextIO | None = None) -> list[Episode]:
        """observe(), then print one warning line per new episode (to stderr unless echo is False) and
        append it to run_dir/diagnostics.jsonl."""
        if not self.history and run_dir is not None and int(row.get("update", 1)) > 1:
            self.replay_logged(Path(run_dir) / "updates.jsonl", before_update=int(row["update"]))
        started = self.observe(row)
        for episode in started:
            rule = self._by_name[episode.rule]
            if echo:
                print(warning_line(episode, rule), file=stream or sys.stderr, flush=True)
            if run_dir is not None:
                record = {"event": "start", **episode.to_dict(), "title": rule.title, "fix": rule.fix}
                with open(Path(run_dir) / "diagnostics.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")
        return started

    def replay_logged(self, path: Path, before_update: int) -> int:
        """Silently feed the rows a resumed run logged before `before_update` (its episodes were already
        reported); the last row logged for an update wins. Returns how many rows were replayed."""
        if not Path(path).is_file():
            return 0
        rows = {row["update"]: row for row in read_jsonl(path, corrupt="skip")
                if isinstance(row.get("update"), (int, float)) and row["update"] < before_update}
        for update in sorted(rows):
            self.observe(rows[update])
        return len(rows)


def warning_line(episode: Episode, rule: Rule | None = None) -> str:
    """The one-line warning printed when an episode of trouble starts (rule: the episode's, if not registered)."""
    rule = rule or RULES[episode.rule]
    return (f"proximo: warning: update {episode.start_update}: {rule.title} [{rule.name}]: "
            f"{episode.evidence.detail}. Fix: {rule.fix}")


def diagnose(rows: Iterable[dict[str, Any]], config: DiagnosticsConfig | None = None,
             total_updates: int | None = None) -> HealthMonitor:
    """Replay a run's rows through a fresh monitor (what `proximo doctor` does); returns the monitor."""
    monitor = HealthMonitor(config, total_updates)
    for row in rows:
        monitor.observe(row)
    return monitor
