"""`proximo doctor RUN_DIR`: a health report of a finished (or running) run, as text and as one HTML page.

The report replays the run's logged update rows through the rules of proximo/diagnostics.py with the run's own
thresholds, so it names the same episodes of trouble the trainer warned about. Which panels it draws, their
threshold lines and each rule's colour come from the rules themselves (proximo/diagnostics.py). The HTML page is
a single self-contained file: inline SVG panels and a small inline script, nothing fetched from the network; its
skeleton, styles and script are the package files proximo/templates/doctor.{html,css,js}.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import html
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from proximo.diagnostics import REWARD_KEYS, DiagnosticsConfig, Episode, HealthMonitor, Panel, Rule, diagnose
from proximo.errors import ProximoError
from proximo.metrics import read_jsonl
from proximo.rundir import run_kind, run_settings, run_title, step_unit

RATIO_RANGE = (0.0, 2.0)  # the range of the ratio histograms proximo/ppo.py records
# what a learning curve shows, the first one logged; rules that judge one of them mark the curve
LEARNING_CURVE_KEYS = ("episode_return_mean", *REWARD_KEYS)


@dataclass
class RunRecord:
    """What doctor reads from a run directory: the update rows, the config and any live warnings."""

    run_dir: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    live_warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, Any]:
        """The training settings (a classic config.json's top level, an LLM run's "config")."""
        return run_settings(self.config)

    @property
    def title(self) -> str:
        """What the run trained: its env id, or `llm KIND: MODEL`."""
        return run_title(self.config)

    @property
    def total_updates(self) -> int | None:
        """Planned updates of the run, from its config (None when unknown)."""
        settings = self.settings
        try:
            if run_kind(self.config) != "classic":
                return int(settings.get("steps") or settings["max_steps"])
            return int(settings["total_steps"]) // (int(settings["num_envs"]) * int(settings["n_steps"]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None

    @property
    def rollout_size(self) -> int | None:
        """Samples per rollout (num_envs x n_steps), if the config says (an LLM run's samples are tokens)."""
        try:
            return int(self.settings["num_envs"]) * int(self.settings["n_steps"])
        except (KeyError, TypeError, ValueError):
            return None


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def load_run(run_dir: str | Path) -> RunRecord:
    """Read updates.jsonl (or metrics.csv), config.json and diagnostics.jsonl of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ProximoError(f"run directory {run_dir} does not exist; pass the folder `proximo train` wrote")
    rows: list[dict[str, Any]] = []
    jsonl, metrics = run_dir / "updates.jsonl", run_dir / "metrics.csv"
    if jsonl.is_file():
        rows = read_jsonl(jsonl)
    elif metrics.is_file():
        with open(metrics, newline="") as handle:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    if rows and all(isinstance(row.get("update"), (int, float)) for row in rows):
        # a run resumed from an older checkpoint logs some updates twice: the later row is the one that counts;
        # an LLM run's row of update 0 is its evaluation before training, not an update
        rows = sorted({row["update"]: row for row in rows if row["update"] > 0}.values(), key=lambda row: row["update"])
    if not rows:
        raise ProximoError(f"{run_dir} has no metrics (updates.jsonl or metrics.csv with at least one update); "
                           "point doctor at a run directory written by `proximo train`")
    config: dict[str, Any] = {}
    if (run_dir / "config.json").is_file():
        try:
            config = json.loads((run_dir / "config.json").read_text())
        except json.JSONDecodeError:
            raise ProximoError(f"{run_dir / 'config.json'} is not valid JSON; fix or delete it") from None
    live: list[dict[str, Any]] = []
    if (run_dir / "diagnostics.jsonl").is_file():
        live = read_jsonl(run_dir / "diagnostics.jsonl", corrupt="skip")
    return RunRecord(run_dir, rows, config, live)


@dataclass
class Report:
    """The verdict on one run: the monitor that replayed it and what the text/HTML views need."""

    record: RunRecord
    thresholds: DiagnosticsConfig
    monitor: HealthMonitor

    @property
    def episodes(self) -> list[Episode]:
        """Every episode of trouble, in the order they started."""
        return self.monitor.episodes

    @property
    def healthy(self) -> bool:
        """True when no rule fired."""
        return not self.monitor.episodes

    @property
    def rules(self) -> dict[str, Rule]:
        """The rules the run was judged by, by name, in their order."""
        return {rule.name: rule for rule in self.monitor.rules}

    def episodes_by_rule(self) -> dict[str, list[Episode]]:
        """The episodes of trouble grouped by rule name, in the order the rules first fired."""
        grouped: dict[str, list[Episode]] = {}
        for episode in self.episodes:
            grouped.setdefault(episode.rule, []).append(episode)
        return grouped

    def applicable_rules(self) -> list[str]:
        """Rules whose statistic the run logged."""
        return [rule.name for rule in self.monitor.rules if rule.applicable(self.monitor.history)]


def examine(run_dir: str | Path) -> Report:
    """Load a run and replay its rows through the health rules with the run's thresholds."""
    record = load_run(run_dir)
    try:
        # a run may hold thresholds of rules this process has not registered (a plugin's): those are ignored
        thresholds = DiagnosticsConfig.from_object(record.settings, strict=False)
    except ProximoError as exc:
        raise ProximoError(f"{record.run_dir / 'config.json'}: {exc}") from None
    monitor = diagnose(record.rows, thresholds, record.total_updates)
    return Report(record, thresholds, monitor)


# text --------------------------------------------------------------------------------------------

def _threshold_text(rule: Rule, thresholds: DiagnosticsConfig) -> str:
    return ", ".join(f"diag_{name}={getattr(thresholds, name):g}" for name in rule.thresholds)


def _return_key(report: Report) -> str | None:
    for key in LEARNING_CURVE_KEYS:
        if report.monitor.history.has(key):
            return key
    return None


def text_report(report: Report) -> str:
    """The plain-text health report printed by `proximo doctor`."""
    record, history = report.record, report.monitor.history
    last, unit = record.rows[-1], step_unit(record.config)
    counted = "" if unit == "updates" else f", {int(last.get('global_step') or 0):,} {unit}"
    lines = [f"proximo doctor: {record.run_dir} ({record.title}, {len(record.rows)} updates{counted})"]
    key = _return_key(report)
    if key is not None:
        values = [v for _, v in history.values(key, 0, len(history))]
        lines.append(f"{key}: first {values[0]:.4g}, best {max(values):.4g}, last {values[-1]:.4g}")
    lines.append("")
    if report.healthy:
        lines.append(f"healthy: none of the {len(report.applicable_rules())} applicable rules fired over "
                     f"{len(record.rows)} updates ({', '.join(report.applicable_rules())}).")
    else:
        by_rule = report.episodes_by_rule()
        lines.append(f"{len(by_rule)} rule{'s' if len(by_rule) != 1 else ''} fired:")
        for name, episodes in by_rule.items():
            rule = report.rules[name]
            fired = sum(len(e.fired_updates) for e in episodes)
            spans = ", ".join(f"{e.start_update}-{e.last_update}" if e.last_update != e.start_update
                              else f"{e.start_update}" for e in episodes)
            lines += ["", f"{rule.title} [{name}]",
                      f"  when:      updates {spans} ({len(episodes)} episode{'s' if len(episodes) != 1 else ''};"
                      f" fired in {fired} of {len(record.rows)} updates)",
                      f"  evidence:  update {episodes[0].start_update}: {episodes[0].evidence.detail}",
                      f"  threshold: {_threshold_text(rule, report.thresholds)}: {rule.reason()}",
                      f"  fix:       {rule.fix}"]
    silent = [name for name in report.rules if name not in report.applicable_rules()]
    if silent:
        lines += ["", f"not checked (statistic not logged, or a rule of the other kind of run): {', '.join(silent)}"]
    if record.live_warnings:
        lines.append(f"warnings printed during training: {len(record.live_warnings)} (diagnostics.jsonl)")
    unfinished = _unfinished_note(record.run_dir, run_kind(record.config))
    if unfinished:
        lines += ["", unfinished]
    return "\n".join(lines)


def _unfinished_note(run_dir: Path, kind: str = "classic") -> str | None:
    """A line for a run that stopped (or is still running) before its final policy/ (model/), else None."""
    if (run_dir / "policy").is_dir() or (run_dir / "summary.json").is_file():
        return None
    # Read-only on purpose: doctor may look at a run that is still training, so no recovery renames here.
    steps = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*") if (p / "state.json").is_file())
    if not steps:
        return None
    if kind != "classic":
        return (f"unfinished: no final model/ (killed, or still running); newest checkpoint {steps[-1]}. `proximo llm "
                f"eval` uses the newest checkpoint; `proximo llm {kind} --resume {run_dir}` continues the run")
    return (f"unfinished: no final policy/ (killed, or still running); newest checkpoint {steps[-1]}. `proximo eval` "
            f"and PPO.load use the newest intact checkpoint; `proximo train --resume {run_dir}` continues the run")


# html --------------------------------------------------------------------------------------------

def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def svg_chart(xs: list[float], ys: list[float], title: str, log: bool = False,
              hlines: list[tuple[float, str]] = (), bands: list[tuple[float, float, str, str]] = (),
              width: int = 660, height: int = 230, y_limits: tuple[float, float] | None = None) -> str:
    """An inline SVG line chart of ys over xs with horizontal threshold lines and shaded, labelled x-bands."""
    left, right, top, bottom = 62, 12, 26, 30
    pw, ph = width - left - right, height - top - bottom
    points = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y) and (y > 0 or not log)]
    tf = (lambda v: math.log10(v)) if log else (lambda v: v)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{left}" y="16" class="ct">{html.escape(title)}</text>']
    if not points:
        out.append(f'<text x="{left + 10}" y="{top + ph / 2}" class="na">no data logged</text></svg>')
        return "".join(out)
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    values = [tf(y) for _, y in points] + [tf(v) for v, _ in hlines if (v > 0 or not log) and math.isfinite(v)]
    y0, y1 = (min(values), max(values)) if y_limits is None else (tf(y_limits[0]), tf(y_limits[1]))
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    px = lambda x: left + (x - x0) / (x1 - x0) * pw  # noqa: E731
    py = lambda v: top + (1 - (min(max(v, y0), y1) - y0) / (y1 - y0)) * ph  # noqa: E731
    for start, stop, label, color in bands:
        a, b = px(start - 0.5), px(stop + 0.5)
        out.append(f'<rect x="{max(a, left):.1f}" y="{top}" width="{max(min(b, left + pw) - max(a, left), 2):.1f}" '
                   f'height="{ph}" fill="{color}" fill-opacity="0.16" class="mark" data-rule="{label}">'
                   f'<title>{html.escape(label)}: updates {start:g}-{stop:g}</title></rect>')
        out.append(f'<path d="M{a:.1f},{top} l-4,-6 h8 z" fill="{color}"/>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>')
    if log:
        ticks = [float(d) for d in range(math.ceil(y0), math.floor(y1) + 1)]
        if len(ticks) > 7:
            ticks = ticks[::math.ceil(len(ticks) / 7)]
        if len(ticks) < 3:  # less than two decades: add the 2x and 5x lines
            ticks = sorted(t for d in range(math.floor(y0), math.ceil(y1) + 1)
                           for t in (d, d + math.log10(2), d + math.log10(5)) if y0 <= t <= y1)
        labels = [f"{10 ** t:.0e}".replace("e-0", "e-").replace("e+0", "e") if abs(t) > 2.5 else f"{10 ** t:.3g}"
                  for t in ticks]
    else:
        ticks = _nice_ticks(y0, y1)
        labels = [f"{t:.3g}" for t in ticks]
    for tick, label in zip(ticks, labels):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" class="grid"/>'
                   f'<text x="{left - 5}" y="{py(tick) + 4:.1f}" class="yl">{label}</text>')
    for tick in _nice_ticks(x0, x1, 6):
        out.append(f'<text x="{px(tick):.1f}" y="{top + ph + 16}" class="xl">{tick:g}</text>')
    out.append(f'<text x="{left + pw}" y="{height - 2}" class="xe">update</text>')
    for value, label in hlines:
        if math.isfinite(value) and (value > 0 or not log):
            y = py(tf(value))
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="thr"/>'
                       f'<text x="{left + pw - 4}" y="{y - 3:.1f}" class="tl">{html.escape(label)}</text>')
    segments: list[list[str]] = [[]]
    for x, y in zip(xs, ys):
        ok = y is not None and math.isfinite(y) and (y > 0 or not log)
        if not ok:
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append(f"{px(x):.1f},{py(tf(y)):.1f}")
    for seg in segments:
        if len(seg) > 1:
            out.append(f'<polyline points="{" ".join(seg)}" class="ln"/>')
        elif seg:
            x, y = seg[0].split(",")
            out.append(f'<circle cx="{x}" cy="{y}" r="2" class="dot"/>')
    out.append("</svg>")
    return "".join(out)


def _series(report: Report, key: str) -> tuple[list[float], list[float]]:
    history = report.monitor.history
    return [float(u) for u in history.updates], list(history.series.get(key, [math.nan] * len(history)))


def panels(rules: list[Rule]) -> list[Panel]:
    """The rules' panels, one per statistic in the order the rules first draw it, with every rule's lines."""
    merged: dict[str, Panel] = {}
    for rule in rules:
        for panel in rule.panels:
            known = merged.get(panel.metric)
            merged[panel.metric] = (panel if known is None
                                    else dataclasses.replace(known, lines=known.lines + panel.lines))
    return list(merged.values())


def _bands_for(report: Report, metrics: tuple[str, ...]) -> list[tuple[float, float, str, str]]:
    rules = report.rules
    return [(e.start_update, e.last_update, e.rule, rules[e.rule].color) for e in report.episodes
            if any(metric in rules[e.rule].marks for metric in metrics)]


def _hlines_for(panel: Panel, t: DiagnosticsConfig) -> list[tuple[float, str]]:
    return [(getattr(t, name), f"diag_{name} {getattr(t, name):g}") for name in panel.lines]


def outside_share(counts: list[float], eps: float, lo: float = RATIO_RANGE[0], hi: float = RATIO_RANGE[1],
                  r_min: float | None = None, r_max: float | None = None) -> float:
    """Share of a ratio histogram's mass outside [1-eps, 1+eps], in [0, 1].

    Within a bin the mass is taken as uniform over the part of the bin inside [r_min, r_max] (the observed
    ratio range, when known).
    """
    total = sum(counts)
    if total <= 0:
        return math.nan
    width = (hi - lo) / len(counts)
    outside = 0.0
    for i, count in enumerate(counts):
        if not count:
            continue
        a, b = lo + i * width, lo + (i + 1) * width
        if r_min is not None and r_max is not None and max(a, r_min) < min(b, r_max):
            a, b = max(a, r_min), min(b, r_max)
        share = (max(0.0, min(b, 1 - eps) - a) + max(0.0, b - max(a, 1 + eps))) / (b - a)
        outside += count * min(share, 1.0)
    return outside / total


def ratio_frames(report: Report) -> list[dict[str, Any]]:
    """Per update with a ratio histogram: counts, clip band, share outside it and the ratio range."""
    frames = []
    rollout = report.record.rollout_size
    for row in report.record.rows:
        counts = row.get("ratio_hist")
        if not isinstance(counts, list) or not counts:
            continue
        eps = float(row.get("clip_range") or 0.2)
        inside_range = sum(counts)
        # ratios above 2 fall outside the histogram; a full last epoch saw every sample of the rollout
        beyond = (max(rollout - inside_range, 0.0) if rollout and not row.get("early_stopped") else 0.0)
        total = inside_range + beyond
        r_min, r_max = row.get("ratio_min"), row.get("ratio_max")
        known = isinstance(r_min, (int, float)) and isinstance(r_max, (int, float))
        share = ((outside_share(counts, eps, r_min=r_min if known else None, r_max=r_max if known else None)
                  * inside_range + beyond) / total if total > 0 else math.nan)
        # a band narrower than one bin cannot be resolved from the histogram (annealed clip ranges end there)
        bin_width = (RATIO_RANGE[1] - RATIO_RANGE[0]) / len(counts)
        resolvable = 2 * eps >= bin_width or (known and (r_max < 1 - eps or r_min > 1 + eps or
                                                          1 - eps <= r_min <= r_max <= 1 + eps))
        clean = lambda v: round(v, 5) if isinstance(v, (int, float)) and math.isfinite(v) else None  # noqa: E731
        frames.append({"update": row.get("update"), "step": row.get("global_step"), "eps": eps,
                       "counts": [int(c) for c in counts], "beyond": int(beyond),
                       "outside": clean(share) if resolvable else None,
                       "clip_fraction": clean(row.get("clip_fraction")), "rmin": clean(row.get("ratio_min")),
                       "rmax": clean(row.get("ratio_max")), "kl": clean(row.get("approx_kl")),
                       "epochs": clean(row.get("epochs"))})
    return frames


def _template(name: str) -> str:
    """A file of proximo/templates (shipped as package data)."""
    return (resources.files("proximo") / "templates" / name).read_text(encoding="utf-8")


def html_report(report: Report) -> str:
    """One self-contained HTML page: verdict, learning curve, diagnostic panels, and the ratio-band view."""
    record, t = report.record, report.thresholds
    esc = html.escape
    if report.healthy:
        verdict = (f"<div class='ok' id='verdict-healthy'><b>Healthy.</b> None of the "
                   f"{len(report.applicable_rules())} applicable rules fired "
                   f"({esc(', '.join(report.applicable_rules()))}).</div>")
    else:
        seen = report.episodes_by_rule()
        findings = [f"<h2 id='verdict-findings'>{len(seen)} rule{'s' if len(seen) != 1 else ''} fired</h2>"]
        for name, episodes in seen.items():
            rule = report.rules[name]
            spans = ", ".join(f"{e.start_update}-{e.last_update}" for e in episodes)
            findings.append(
                f"<div class='finding' style='border-color:{rule.color}' data-rule='{name}'>"
                f"<b>{esc(rule.title)}</b> <code>{name}</code>"
                f"<div><span class='k'>when</span>updates {spans} "
                f"(fired in {sum(len(e.fired_updates) for e in episodes)} of {len(record.rows)} updates)</div>"
                f"<div><span class='k'>evidence</span>update {episodes[0].start_update}: "
                f"{esc(episodes[0].evidence.detail)}</div>"
                f"<div><span class='k'>threshold</span>{esc(_threshold_text(rule, t))}: {esc(rule.reason())}</div>"
                f"<div><span class='k'>fix</span>{esc(rule.fix)}</div></div>")
        verdict = "".join(findings)
    judged = set(report.applicable_rules())  # the legend names the rules that judged this run
    legend = "".join(f"<span><svg width='12' height='10'><rect width='12' height='10' fill='{rule.color}' "
                     f"fill-opacity='0.5'/></svg> {rule.name}</span>" for rule in report.rules.values()
                     if rule.name in judged)
    charts = []
    key = _return_key(report)
    if key is not None:
        xs, ys = _series(report, key)
        charts.append(f"<div class='panel' id='panel-learning-curve'>"
                      f"{svg_chart(xs, ys, f'learning curve: {key}', bands=_bands_for(report, LEARNING_CURVE_KEYS))}"
                      f"</div>")
    history = report.monitor.history
    missing = []
    # the panels of the rules that judged this run: a classic run draws no language-model panels, and back
    for panel in panels([rule for rule in report.monitor.rules if rule.name in judged]):
        if not history.has(panel.metric):
            missing.append(panel.metric)
            continue
        xs, ys = _series(report, panel.metric)
        chart = svg_chart(xs, ys, panel.title, log=panel.log, hlines=_hlines_for(panel, t),
                          bands=_bands_for(report, (panel.metric,)), y_limits=panel.limits)
        charts.append(f"<div class='panel' id='panel-{panel.metric}'>{chart}</div>")
    data = json.dumps(ratio_frames(report), separators=(",", ":")).replace("</", "<\\/")
    return Template(_template("doctor.html")).substitute(
        run_dir=esc(str(record.run_dir)), env=esc(record.title), updates=len(record.rows),
        steps=f"{int(record.rows[-1].get('global_step') or 0):,} {step_unit(record.config)}", css=_template("doctor.css"), verdict=verdict,
        legend=legend, panels="".join(charts),
        missing=f"<div class='sub'>Not logged by this run: {esc(', '.join(missing))}.</div>" if missing else "",
        ratio_data=data, script=_template("doctor.js"))


# command line ------------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    """Print the health report of a run directory; with --html also write the page."""
    report = examine(args.run_dir)
    print(text_report(report))
    if args.html is not None:
        target = Path(args.html)
        if target.is_dir():
            raise ProximoError(f"--html {target} is a directory; give a file name such as {target / 'report.html'}")
        if not target.parent.is_dir():
            raise ProximoError(f"--html {target}: folder {target.parent} does not exist; create it first")
        target.write_text(html_report(report), encoding="utf-8")
        print(f"\nhtml report: {target}")
    return 0


def register(subparsers: Any) -> None:
    """Add `proximo doctor RUN_DIR [--html FILE]`."""
    parser = subparsers.add_parser("doctor", help="diagnose a run: which PPO failure modes showed, and fixes")
    parser.add_argument("run_dir", type=Path, help="a run directory written by `proximo train`")
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML report")
    parser.set_defaults(handler=cmd_doctor)


__all__ = ["examine", "load_run", "text_report", "html_report", "panels", "ratio_frames", "outside_share",
           "register"]
