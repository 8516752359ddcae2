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
import itertools
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
    "window": threshold(20, "Updates in the baseline window (value loss, gradient norm, explained variance; the first "
                        "and last windows of a language-model run's rewards): long "
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


def _llm(h: History) -> bool:
    """Whether the rows are a language-model RL run's (GRPO, PPO-RLHF): they log response_length."""
    return h.has("response_length")


def _classic(key: str) -> Callable[[History], bool]:
    """applies= of a classic rule whose language-model counterpart judges the same statistic."""
    return lambda h: h.has(key) and not _llm(h)


def _llm_logged(key: str) -> Callable[[History], bool]:
    """applies= of a language-model rule judging `key`."""
    return lambda h: h.has(key) and _llm(h)


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


# reward over-optimization: the training reward against a true reward logged beside it

PROXY_KEYS = ("score", "reward", "reward_mean")  # the reward trained on: RLHF's reward-model score first
# a true reward beside it: the task's (or --eval-reward's) reward of the training samples, else held-out evaluation
TRUE_KEYS = ("accuracy", "eval_sampled_accuracy", "eval_greedy_accuracy")
MEDIAN_SE = math.sqrt(math.pi / 2)  # standard error of a median over that of a mean, for normal noise


def _same_series(h: History, a: str, b: str, probe: int = 20) -> bool:
    """Whether two columns hold the same values (GRPO on a task logs its reward as accuracy too)."""
    pairs = ((x, y) for x, y in zip(h.series[a], h.series[b]) if math.isfinite(x) and math.isfinite(y))
    probed = list(itertools.islice(pairs, probe))  # identical columns are identical from their first rows
    return bool(probed) and all(x == y for x, y in probed)


def overoptimization_keys(h: History) -> tuple[str, str] | None:
    """(training reward, true reward) columns the rows log, or None when there is no distinct true reward."""
    proxy = next((key for key in PROXY_KEYS if h.has(key)), None)
    if proxy is None:
        return None
    true = next((key for key in TRUE_KEYS if h.has(key) and not _same_series(h, proxy, key)), None)
    return None if true is None else (proxy, true)


NOISE_WINDOWS = 5  # windows at the end of a run whose changes measure a series' noise (with its first window)


def noise_level(*blocks: list[float]) -> float:
    """Robust standard deviation of one value of a series around its trend: 1.4826 x the median absolute
    difference of consecutive values (within each block of consecutive values), over sqrt(2) (a difference
    holds two values' noise); NaN under 2 differences."""
    changes = [abs(b - a) for values in blocks for a, b in itertools.pairwise(values)]
    if len(changes) < 2:
        return math.nan
    return 1.4826 * median(changes) / math.sqrt(2)


def shift_z(h: History, key: str, n: int, window: int) -> tuple[float, float, float, list[tuple[int, float]]]:
    """(z, median of the first `window` updates, median of the last `window` updates, the last window's values):
    the change of `key` between the two windows in standard errors of a difference of two medians."""
    first, last = h.values(key, 0, window), h.values(key, n - window, n)
    if not first or not last:
        return math.nan, math.nan, math.nan, last
    before, now = median(v for _, v in first), median(v for _, v in last)
    # the noise of its update-to-update changes within the first window and the last NOISE_WINDOWS windows (held-out
    # evaluations every few updates have values there too); bounded work per update on long runs
    start = max(window, n - NOISE_WINDOWS * window)
    noise = noise_level([v for _, v in first], [v for _, v in h.values(key, start, n)])
    error = MEDIAN_SE * noise * math.sqrt(1 / len(first) + 1 / len(last))
    if not math.isfinite(error):
        return math.nan, before, now, last
    change = now - before
    z = change / error if error > 0 else math.copysign(math.inf, change) if change else 0.0
    return z, before, now, last


def _overoptimization(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    keys = overoptimization_keys(h)
    n = len(h)
    if keys is None or n < 2 * cfg.window:  # two windows that do not overlap
        return None
    proxy, true = keys
    z_proxy, proxy_start, proxy_now, _ = shift_z(h, proxy, n, cfg.window)
    z_true, true_start, true_now, true_pairs = shift_z(h, true, n, cfg.window)
    if not (z_proxy >= cfg.overopt_z and z_true <= -cfg.overopt_z):
        return None
    return _evidence(h, f"{true} shift (standard errors)", z_true, -cfg.overopt_z, true_pairs,
                     f"training reward {proxy} rose from {_fmt(proxy_start)} (median of updates 1-{cfg.window}) to "
                     f"{_fmt(proxy_now)} ({z_proxy:+.1f} standard errors) while the true reward {true} fell from "
                     f"{_fmt(true_start)} to {_fmt(true_now)} ({z_true:+.1f}; diag_overopt_z {cfg.overopt_z:g})")


def _overoptimization_logged(h: History) -> bool:
    return overoptimization_keys(h) is not None


def _kl_ref_blowup(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    n = len(h)
    # GRPO without a KL term measures kl_ref on a few updates only: the newest `recent` measured in a window
    pairs = _kl_per_response(h, n - cfg.window, n)[-cfg.recent:]
    if len(pairs) < min(cfg.recent, 3):
        return None
    level = median(v for _, v in pairs)
    if not level > cfg.kl_ref_max:
        return None
    return _evidence(h, "median KL per response", level, cfg.kl_ref_max, pairs,
                     f"median KL to the reference {_fmt(level)} nats per response over {_span(pairs)} > "
                     f"diag_kl_ref_max {cfg.kl_ref_max:g}")


def _kl_ref_logged(h: History) -> bool:
    return h.has("kl_ref_sequence") or h.has("kl_ref")


def _fell_below(h: History, key: str, floor: float, cfg: DiagnosticsConfig):
    """(start, level, recent pairs) when the median of key over the last `recent` updates is below floor and
    that over the first `recent` was not (a series that starts below the floor has nothing to fall from), else
    None."""
    n = len(h)
    first, recent = h.values(key, 0, cfg.recent), h.values(key, n - cfg.recent, n)
    if n < 2 * cfg.recent or len(first) < cfg.recent or len(recent) < cfg.recent:
        return None
    start, level = median(v for _, v in first), median(v for _, v in recent)
    return (start, level, recent) if level < floor <= start else None


def _length_collapse(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    key = "response_length"
    # a run whose answers are one token from the start (a one-token task) has nothing to collapse from
    fell = _fell_below(h, key, cfg.length_min, cfg)
    if fell is None:
        return None
    start, level, recent = fell
    return _evidence(h, f"median {key}", level, cfg.length_min, recent,
                     f"median {key} {_fmt(level)} tokens over {_span(recent)} < diag_length_min {cfg.length_min:g} "
                     f"(it started at {_fmt(start)})")


def _token_entropy_collapse(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    key = "entropy"
    n = len(h)
    if ctx.total_updates and n > cfg.entropy_early * ctx.total_updates:
        return None  # late in a run a near-deterministic policy is usually convergence on its answers
    fell = _fell_below(h, key, cfg.token_entropy_min, cfg)
    if fell is None:
        return None
    start, level, recent = fell
    return _evidence(h, f"median {key}", level, cfg.token_entropy_min, recent,
                     f"median token {key} {_fmt(level)} nats over {_span(recent)} < diag_token_entropy_min "
                     f"{cfg.token_entropy_min:g} (it started at {_fmt(start)}) within the first "
                     f"{cfg.entropy_early:.0%} of the run")


OFFPOLICY_KL = "offpolicy/kl"  # KL(sampler || learner) per token of a step's samples (the off-policy correction's)


def _offpolicy_kl(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    key = OFFPOLICY_KL
    n = len(h)
    recent = h.values(key, n - cfg.recent, n)
    if not h.has(key) or len(recent) < cfg.recent:
        return None
    level = median(v for _, v in recent)
    if level > cfg.offpolicy_kl_max:
        return _evidence(h, f"median {key}", level, cfg.offpolicy_kl_max, recent,
                         f"median {key} {_fmt(level)} nats per token over {_span(recent)} > diag_offpolicy_kl_max "
                         f"{cfg.offpolicy_kl_max:g}")
    if n < cfg.window + cfg.recent:
        return None
    early = h.values(key, 0, cfg.window)
    base = median(v for _, v in early)
    limit = cfg.offpolicy_kl_growth * base
    if len(early) >= cfg.recent and level > limit and level > cfg.offpolicy_kl_floor:
        return _evidence(h, f"median {key}", level, limit, recent,
                         f"median {key} {_fmt(level)} over {_span(recent)} grew past {cfg.offpolicy_kl_growth:g} x its "
                         f"median {_fmt(base)} over {_span(early)} (and above diag_offpolicy_kl_floor "
                         f"{cfg.offpolicy_kl_floor:g})")
    return None


def _no_clipping(h: History, cfg: DiagnosticsConfig, ctx: Context) -> Evidence | None:
    key = "clip_fraction"
    n = len(h)
    pairs = h.values(key, n - cfg.window, n)
    if n < cfg.window or len(pairs) < cfg.window or any(v != 0.0 for _, v in pairs):
        return None
    # one optimizer step per update compares the policy with itself: its ratio is 1 by construction
    steps = median(v for _, v in h.values("minibatches", n - cfg.window, n))
    if math.isfinite(steps) and steps < 2:
        return None
    kl_pairs = h.values("approx_kl", n - cfg.window, n)
    kl = median(v for _, v in kl_pairs)
    if not kl < cfg.clip_zero_kl:
        return None
    return _evidence(h, "median approx_kl", kl, cfg.clip_zero_kl, kl_pairs,
                     f"{key} was exactly 0 in every one of {_span(pairs)} and the policy barely moved (median "
                     f"approx_kl {_fmt(kl)} < diag_clip_zero_kl {cfg.clip_zero_kl:g})")


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
         panels=(Panel("entropy", "policy entropy (nats)"),),
         applies=_classic("entropy")),  # language-model runs: token_entropy_collapse
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
         panels=(Panel("clip_fraction", CLIP_FRACTION_TITLE, lines=("clip_low",)),),
         applies=_classic("clip_fraction")),  # language-model runs: clip_fraction_zero
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
    # language-model RL (GRPO, PPO-RLHF): rows that log response_length -------------------------------
    Rule("reward_hacking", "reward hacking / over-optimization (training reward up, true reward down)", "accuracy",
         "The policy climbs the reward where it is wrong: raise the KL penalty to the reference (kl_coef), stop at "
         "the true reward's peak (an earlier checkpoint), or retrain the reward model on the policy's own samples.",
         "#2ca02c", _overoptimization,
         thresholds={
             "overopt_z": threshold(3.0, "Both shifts, between the median of the first `window` updates and that of "
                                    "the last `window`, counted in standard errors of such a difference (each "
                                    "series' noise estimated from its own update-to-update changes, so a reward-"
                                    "model score and an accuracy are judged on their own scales): chance alone "
                                    "moves one series past 3 about once in 740 comparisons, and the rule needs the "
                                    "training reward up and the true reward down at once.", POSITIVE)},
         panels=(Panel("score", "training reward: reward-model score"),
                 Panel("accuracy", "true reward of the training samples"),
                 Panel("eval_sampled_accuracy", "held-out true reward (sampled)")),
         applies=_overoptimization_logged),
    Rule("kl_ref_blowup", "KL to the reference blowing up", "kl_ref",
         "Raise kl_coef (or use kl_controller adaptive with a kl_target), lower learning_rate, or stop earlier: "
         "the policy has left the region the reward model (and the reference) describe.", "#1f77b4", _kl_ref_blowup,
         thresholds={
             "kl_ref_max": threshold(10.0, "KL to the reference model (nats per response, summed over tokens; "
                                     "kl_ref_sequence, else kl_ref x response_length) past which the policy's answers "
                                     "are e^10 = 22000 times likelier under it than under the reference: a rising "
                                     "reward there is more likely exploitation of the reward model than better "
                                     "answers.", POSITIVE)},
         panels=(Panel("kl_ref_sequence", "KL to the reference (nats per response)", lines=("kl_ref_max",)),
                 Panel("kl_ref", "KL to the reference (nats per token)")),
         applies=_kl_ref_logged),
    Rule("response_length_runaway", "responses running into max_new_tokens", "truncated_fraction",
         "Raise max_new_tokens if the answers need the room; else penalize length (a length term in the reward) or "
         "mask cut completions out of the loss (GRPO's mask_truncated true).", "#8c6d31",
         median_check("truncated_fraction", "truncated_max", above=True),
         thresholds={
             "truncated_max": threshold(0.5, "Median fraction of a step's completions cut at max_new_tokens without a "
                                        "stop token: above one half, most rewards judge unfinished answers and the "
                                        "length presses at the cap instead of settling where the answers end.",
                                        FRACTION)},
         panels=(Panel("truncated_fraction", "completions cut at max_new_tokens (fraction)", limits=(0.0, 1.0),
                       lines=("truncated_max",)),)),
    Rule("response_length_collapse", "responses collapsing to 0-1 tokens", "response_length",
         "The reward favours empty answers (or penalizes length too hard): check the reward on short completions, "
         "lower the length penalty, or lower learning_rate.", "#843c39", _length_collapse,
         thresholds={
             "length_min": threshold(1.5, "Median response length (tokens per completion, the stop token counted) "
                                     "below this, after starting at or above it: most completions are the stop "
                                     "token alone or one token, an empty answer.", POSITIVE)},
         panels=(Panel("response_length", "response length (tokens)", lines=("length_min",)),),
         applies=_llm_logged("response_length")),
    Rule("token_entropy_collapse", "token entropy collapsing early", "entropy",
         "Raise the sampling temperature, add an entropy bonus (ent_coef), use a higher upper clip "
         "(clip_range_high, DAPO's clip-higher) or lower learning_rate.", "#7b4173", _token_entropy_collapse,
         thresholds={
             "token_entropy_min": threshold(0.05, "Median mean token entropy (nats per response token) below this, "
                                            "having started above it, within the first diag_entropy_early of the "
                                            "run: at 0.05 nats at least 99% of a token's probability sits on one "
                                            "token (H = e(1 + ln 1/e) for the rest e, 0.056 at e = 0.01), so a group "
                                            "of 8 samples of a 4-token answer repeats one answer with probability "
                                            "0.99^32 = 0.72 or more: the policy stopped exploring.", POSITIVE)},
         panels=(Panel("entropy", "policy entropy (nats)", lines=("token_entropy_min",)),),
         applies=_llm_logged("entropy")),
    Rule("offpolicy_kl", "sampler/learner mismatch growing", OFFPOLICY_KL,
         "The sampling engine's probabilities drift from the learner's: sync weights every step, sample in the "
         "learner's precision, or turn on the off-policy correction (truncated importance weights).", "#637939",
         _offpolicy_kl,
         thresholds={
             "offpolicy_kl_max": threshold(0.01, "Median KL(sampler || learner) per token above this: an rms log-"
                                           "ratio of sqrt(2 x 0.01) = 0.14, so the samples are as far from the "
                                           "learner's policy as a PPO step that reaches the clip band (0.2) before "
                                           "the update starts (a growing mismatch preceded the collapses in Liu, Li "
                                           "et al. 2025, \"When Speed Kills Stability\").", POSITIVE),
             "offpolicy_kl_growth": threshold(10.0, "Median over the recent updates above this multiple of its "
                                              "median over the run's first `window` updates: an order of magnitude "
                                              "is growth, not the noise of a per-step estimate.", POSITIVE),
             "offpolicy_kl_floor": threshold(1e-3, "Growth counts only above this level (rms log-ratio 0.045, about "
                                             "bf16 rounding of log-probs): a float32 sampler's 1e-9 growing to 1e-8 "
                                             "is no mismatch.", POSITIVE)},
         panels=(Panel(OFFPOLICY_KL, "sampler/learner KL per token (nats)", log=True,
                       lines=("offpolicy_kl_max", "offpolicy_kl_floor")),)),
    Rule("zero_std_groups", "groups without reward spread (no learning signal)", "zero_std_fraction",
         "The prompts are too easy or too hard for the policy: drop all-equal groups (dynamic_sampling true), raise "
         "group_size, pick prompts of the right difficulty, or stop a run whose reward is saturated.", "#3182bd",
         median_check("zero_std_fraction", "zero_std_max", above=True),
         thresholds={
             "zero_std_max": threshold(0.5, "Median fraction of a step's groups whose rewards are all equal above "
                                       "this: their advantages are 0, so most of the batch gives the policy "
                                       "gradient no signal (the waste DAPO's dynamic sampling removes). A group of 8 "
                                       "at accuracy 0.9 is all-correct with probability 0.43.", FRACTION)},
         panels=(Panel("zero_std_fraction", "groups with zero reward spread (fraction)", limits=(0.0, 1.0),
                       lines=("zero_std_max",)),)),
    Rule("clip_fraction_zero", "no sample clipped and the policy not moving (no learning)", "clip_fraction",
         "Raise learning_rate (e.g. 3x), n_epochs or num_minibatches: the updates do not change the policy.",
         "#e6550d", _no_clipping,
         thresholds={
             "clip_zero_kl": threshold(1e-6, "With clip_fraction exactly 0 in every update of the last `window` "
                                       "(and at least 2 optimizer steps per update, else the ratio is 1 by "
                                       "construction), a median approx_kl below this (nats per token, k3 ~ half the "
                                       "mean squared log-ratio: rms 0.0014) needs some 700 updates all pushing the "
                                       "same way to change a token's probability e-fold.", POSITIVE)},
         applies=_llm_logged("clip_fraction")),
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
            # a rule judges only runs that log its statistics (a classic rule leaves language-model rows to
            # its counterpart, and back)
            evidence = (rule.check(self.history, self.config, self.context) if rule.applicable(self.history)
                        else None)
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
