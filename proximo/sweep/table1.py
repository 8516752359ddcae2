"""The PPO paper's Table 1 (Schulman et al. 2017): 11 surrogate-objective settings on 7 MuJoCo tasks, scored as
the paper does (mean return of the last 100 training episodes; per env, random policy 0 and best setting 1)."""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from proximo.checkpoint import atomic_write_bytes, atomic_write_json
from proximo.doctor import examine
from proximo.errors import ConfigError
from proximo.sweep.options import add_cluster_flags, run_options
from proximo.sweep.spec import SweepSpec, setting_label

ENVS = ["HalfCheetah-v5", "Hopper-v5", "InvertedDoublePendulum-v5", "InvertedPendulum-v5", "Reacher-v5",
        "Swimmer-v5", "Walker2d-v5"]

# (name as the paper's table writes it, the config fields that make it); adaptive KL starts from beta = 1
# (PPOConfig.kl_coef's default), as the paper's initial beta.
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("no clipping or penalty", {"objective": "none"}),
    ("clipping, eps = 0.1", {"objective": "clip", "clip_range": 0.1}),
    ("clipping, eps = 0.2", {"objective": "clip", "clip_range": 0.2}),
    ("clipping, eps = 0.3", {"objective": "clip", "clip_range": 0.3}),
    ("adaptive KL, d_targ = 0.003", {"objective": "adaptive_kl", "kl_target": 0.003}),
    ("adaptive KL, d_targ = 0.01", {"objective": "adaptive_kl", "kl_target": 0.01}),
    ("adaptive KL, d_targ = 0.03", {"objective": "adaptive_kl", "kl_target": 0.03}),
    ("fixed KL, beta = 0.3", {"objective": "fixed_kl", "kl_coef": 0.3}),
    ("fixed KL, beta = 1", {"objective": "fixed_kl", "kl_coef": 1.0}),
    ("fixed KL, beta = 3", {"objective": "fixed_kl", "kl_coef": 3.0}),
    ("fixed KL, beta = 10", {"objective": "fixed_kl", "kl_coef": 10.0}),
]
# The paper's Table 1 (1M steps, 3 seeds, v1 envs), in SETTINGS order.
PAPER = [-0.39, 0.76, 0.82, 0.70, 0.68, 0.74, 0.71, 0.62, 0.71, 0.72, 0.69]
RANDOM_FILE = "random_returns.json"


def pick_envs(text: str) -> list[str]:
    """--envs all | a comma list of the 7 (v5 ids, or short names such as hopper)."""
    if text.strip().lower() == "all":
        return list(ENVS)
    by_short = {env.split("-")[0].lower(): env for env in ENVS}
    chosen = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        env = part if part in ENVS else by_short.get(part.split("-")[0].lower())
        if env is None:
            raise ConfigError(f"--envs {part!r} is not one of the paper's tasks; choose from "
                              f"{', '.join(ENVS)} (or all)")
        if env not in chosen:
            chosen.append(env)
    if not chosen:
        raise ConfigError("--envs is empty; give all or a list such as hopper,walker2d")
    return chosen


def random_return(env_id: str, episodes: int = 100, seed: int = 0) -> dict[str, float]:
    """Mean and std of the total reward of a uniform random policy over `episodes` episodes."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "episodes": episodes, "seed": seed}


def random_returns(envs: list[str], episodes: int, cache: Path | None = None) -> dict[str, dict[str, float]]:
    """random_return of each env, reusing (and extending) a cache file of earlier measurements."""
    known: dict[str, dict[str, float]] = {}
    if cache is not None and cache.is_file():
        known = json.loads(cache.read_text()).get("envs", {})
    for env_id in envs:
        if env_id not in known or known[env_id].get("episodes") != episodes:
            known[env_id] = random_return(env_id, episodes)
    if cache is not None:
        atomic_write_json(cache, {"what": "total reward of a uniform random policy (action_space.sample())",
                                  "command": f"proximo paper random --envs {','.join(envs)} --episodes {episodes}",
                                  "envs": known})
    return {env_id: known[env_id] for env_id in envs}


def normalize(raw: dict[str, dict[str, list[float]]], random: dict[str, float]) -> dict[str, Any]:
    """The paper's score from raw[env][setting] = per-seed last-100 returns and random[env].

    Per env, a score is shifted and scaled so that the random policy is 0 and the best setting (its mean over
    seeds) is 1; each setting's number is the mean over envs and seeds. Returns {"score": {setting: value},
    "per_seed": {setting: [env-mean per seed index]}, "per_env": {env: {setting: normalized mean}}}. An env
    where no setting beats random cannot be scaled and is left out (named in "skipped").
    """
    settings = list(dict.fromkeys(s for per_env in raw.values() for s in per_env))
    per_env: dict[str, dict[str, float]] = {}
    per_env_seed: dict[str, dict[str, list[float]]] = {}
    skipped = []
    for env_id, by_setting in raw.items():
        means = {s: float(np.mean(v)) for s, v in by_setting.items() if len(v)}
        if not means:
            continue
        best, floor = max(means.values()), random[env_id]
        if not best > floor:
            skipped.append(env_id)
            continue
        scale = best - floor
        per_env[env_id] = {s: (m - floor) / scale for s, m in means.items()}
        per_env_seed[env_id] = {s: [(x - floor) / scale for x in v] for s, v in by_setting.items()}
    score, per_seed = {}, {}
    for s in settings:
        values = [x for env_id in per_env_seed for x in per_env_seed[env_id].get(s, [])]
        score[s] = float(np.mean(values)) if values else math.nan
        seeds = max((len(per_env_seed[e].get(s, [])) for e in per_env_seed), default=0)
        per_seed[s] = [float(np.mean([per_env_seed[e][s][i] for e in per_env_seed
                                      if len(per_env_seed[e].get(s, [])) > i])) for i in range(seeds)]
    return {"score": score, "per_seed": per_seed, "per_env": per_env, "skipped": skipped}


def verdict(score: dict[str, float]) -> list[tuple[str, bool]]:
    """The paper's orderings and whether each holds in `score` (keyed by SETTINGS names)."""
    names = [name for name, _ in SETTINGS]
    if any(name not in score or not math.isfinite(score[name]) for name in names):
        return []
    clip = {n: score[n] for n in names[1:4]}
    adaptive = {n: score[n] for n in names[4:7]}
    fixed = {n: score[n] for n in names[7:]}
    best = max(score, key=score.get)
    return [
        ("clipping with eps = 0.2 is the best of all 11 settings", best == names[2]),
        ("no clipping or penalty is the worst setting", min(score, key=score.get) == names[0]),
        ("no clipping or penalty scores below the random policy (< 0)", score[names[0]] < 0),
        ("the best clipping setting beats the best adaptive-KL and the best fixed-KL setting",
         max(clip.values()) > max(max(adaptive.values()), max(fixed.values()))),
        ("eps = 0.2 beats both eps = 0.1 and eps = 0.3", clip[names[2]] > max(clip[names[1]], clip[names[3]])),
    ]


def collect_raw(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """raw[env][setting name] = last-100 training returns of the finished trials, seeds in order."""
    by_label = {_label(settings): name for name, settings in SETTINGS}
    raw: dict[str, dict[str, list[float]]] = {}
    for row in sorted(rows, key=lambda r: r["seed"]):
        value = row.get("train_return_last100")
        if row["status"] != "done" or value is None or not math.isfinite(value):
            continue
        name = by_label.get(row["setting"], row["setting"])
        raw.setdefault(row["env_id"], {}).setdefault(name, []).append(float(value))
    return raw


def _label(settings: dict[str, Any]) -> str:
    return setting_label(settings)


def report(rows: list[dict[str, Any]], random: dict[str, dict[str, float]], meta: dict[str, Any],
           sweep_dir: Path | None = None) -> dict[str, Any]:
    """Everything of the table as JSON: raw returns, random returns, normalized scores, the paper's, the verdict,
    and (with sweep_dir) what the doctor says of each setting's runs."""
    raw = collect_raw(rows)
    result = normalize(raw, {env: r["mean"] for env, r in random.items()})
    checks = verdict(result["score"])
    return {**meta, "raw": raw, "random": random, **result,
            "paper": dict(zip([name for name, _ in SETTINGS], PAPER)),
            "verdict": [{"claim": claim, "holds": holds} for claim, holds in checks],
            "doctor": doctor_summary(rows, sweep_dir) if sweep_dir is not None else {}}


def doctor_summary(rows: list[dict[str, Any]], sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Per setting: how many of its finished runs each health rule fired in (proximo doctor's replay of
    every run's rows), and how many runs were healthy."""
    by_label = {_label(settings): name for name, settings in SETTINGS}
    summary: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["status"] != "done":
            continue
        name = by_label.get(row["setting"], row["setting"])
        entry = summary.setdefault(name, {"runs": 0, "healthy": 0, "rules": {}})
        report = examine(sweep_dir / row["run_dir"])
        entry["runs"] += 1
        entry["healthy"] += int(report.healthy)
        for rule in report.episodes_by_rule():
            entry["rules"][rule] = entry["rules"].get(rule, 0) + 1
    return summary


def markdown(data: dict[str, Any]) -> str:
    """The table beside the paper's, the per-env raw returns, and the verdict."""
    names = [name for name, _ in SETTINGS]
    envs = [env for env in data["envs"] if env in data["raw"]]
    seeds = data["seeds"]
    lines = [f"# PPO paper, Table 1, reproduced at {data['steps']:,} steps x {len(seeds)} seed(s)", "",
             "Command:", "", "```bash", data["command"], "```", "",
             f"Machine: {data['machine']}. Envs: {', '.join(data['envs'])} (v5). Preset `paper-mujoco` (1 env, "
             "T 2048, 10 epochs, minibatch 64, Adam 3e-4, gamma 0.99, lambda 0.95, 2x64 tanh, separate policy and "
             "value networks, no entropy bonus). Score: mean total reward of the last 100 training episodes of a "
             "run; per env random policy = 0 and best setting = 1; averaged over envs and seeds.", "",
             "## Normalized score", "",
             "| setting | proximo | +- over seeds | paper (1M steps, 3 seeds) |", "|---|---|---|---|"]
    for name in names:
        score = data["score"].get(name, math.nan)
        per_seed = data["per_seed"].get(name, [])
        spread = f"{np.std(per_seed):.2f}" if len(per_seed) > 1 else "(1 seed)"
        lines.append(f"| {name} | {score:.2f} | {spread} | {data['paper'][name]:.2f} |")
    if data["skipped"]:
        lines += ["", f"Left out (no setting beat the random policy): {', '.join(data['skipped'])}."]
    lines += ["", "## Verdict", ""]
    for item in data["verdict"]:
        lines.append(f"- {'holds' if item['holds'] else 'does NOT hold'}: {item['claim']}")
    if not data["verdict"]:
        lines.append("- not judged: some settings have no finished run")
    lines += ["", "## Raw returns (last 100 training episodes, mean over seeds)", "",
              "| setting | " + " | ".join(e.replace("-v5", "") for e in envs) + " |",
              "|---|" + "---|" * len(envs)]
    for name in names:
        cells = [f"{np.mean(data['raw'][e][name]):.1f}" if name in data["raw"][e] else "" for e in envs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| random policy | " + " | ".join(f"{data['random'][e]['mean']:.1f}" for e in envs) + " |")
    episodes = next(iter(data["random"].values()))["episodes"] if data["random"] else 0
    lines += ["", f"Random policy: uniform random actions, {episodes} episodes per env "
              f"(`proximo paper random --envs all --episodes {episodes}`).", "",
              "## Normalized score per env", "",
              "| setting | " + " | ".join(e.replace("-v5", "") for e in envs) + " |", "|---|" + "---|" * len(envs)]
    for name in names:
        cells = [f"{data['per_env'][e][name]:.2f}" if name in data["per_env"].get(e, {}) else "" for e in envs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if data.get("doctor"):
        lines += ["", "## What the doctor says", "",
                  "Each run's rows replayed through proximo's health rules (`proximo doctor RUN`): per setting, in how "
                  "many of its runs each rule fired.", "", "| setting | healthy runs | rules that fired (runs) |",
                  "|---|---|---|"]
        for name in names:
            entry = data["doctor"].get(name)
            if entry:
                fired = ", ".join(f"{rule} ({count})" for rule, count in sorted(entry["rules"].items(),
                                                                                key=lambda item: -item[1]))
                lines.append(f"| {name} | {entry['healthy']}/{entry['runs']} | {fired or '-'} |")
    populations = data.get("populations", 0)
    if populations:
        lines += ["", f"Sweep: {data['sweep_dir']} ({data['trials_done']}/{data['trials']} trials finished, trained as "
                  f"{populations} batched populations of one env's settings and seeds, one core each; their "
                  f"training took {data['trial_time_s'] / 3600:.2f} CPU-hours in all).", ""]
    else:
        lines += ["", f"Sweep: {data['sweep_dir']} ({data['trials_done']}/{data['trials']} trials finished; their "
                  f"training took {data['trial_time_s'] / 60:.1f} min in all, at a mean {data['sps']:,.0f} steps/s "
                  "per trial on one core each).", ""]
        lines += full_scale(data["sps"])
    return "\n".join(lines) + "\n"


def full_scale(sps: float, runs: int = 7 * 11 * 3, steps: int = 1_000_000) -> list[str]:
    """Markdown lines: what the paper's full protocol costs at `sps` steps/s per run, and how to run it."""
    if not (sps and math.isfinite(sps)):
        return []
    cpu_hours = runs * steps / sps / 3600
    one_run_h = steps / sps / 3600
    # trials are whole runs: n cores finish ceil(runs / n) rounds of one run each
    walls = ", ".join(f"{math.ceil(runs / n) * one_run_h:,.1f} h on {n} cores" for n in (2, 8, 32))
    return ["## Full scale", "",
            f"{runs} runs x {steps:,} steps at the measured {sps:,.0f} steps/s per run (one core each) take "
            f"{cpu_hours:,.0f} CPU-hours: wall time about {walls} (one trial per core), and "
            f"{one_run_h:.1f} h, the length of one run, on {runs} cores. On a Ray cluster (the sweep directory on a "
            "file system every node sees):", "",
            "```bash", "ray start --head --port 6379                      # on the head node",
            "ray start --address HEAD:6379                     # on every other node",
            "proximo paper table1 --steps 1000000 --seeds 3 --envs all --address auto \\",
            "    --sweep-dir /shared/table1 --output /shared/table1/table1", "```"]


def figure(data: dict[str, Any], path: Path) -> Path:
    """Bars of the normalized score per setting (proximo with its band over seeds, beside the paper's)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in SETTINGS]
    ours = np.array([data["score"].get(n, math.nan) for n in names])
    spread = np.array([np.std(data["per_seed"].get(n, [0])) if len(data["per_seed"].get(n, [])) > 1 else 0.0
                       for n in names])
    x = np.arange(len(names))
    fig, axes = plt.subplots(figsize=(10, 4.6), dpi=120)
    axes.bar(x - 0.2, ours, 0.4, yerr=spread if spread.any() else None, capsize=3,
             label=f"proximo ({data['steps']:,} steps, {len(data['seeds'])} seed(s))", color="#2b6cb0")
    axes.bar(x + 0.2, PAPER, 0.4, label="paper (1M steps, 3 seeds)", color="#a0aec0")
    # each env's normalized score: the spread behind a bar, visible even with one seed
    for i, name in enumerate(names):
        points = [per_env[name] for per_env in data["per_env"].values() if name in per_env]
        axes.scatter(np.full(len(points), x[i] - 0.2), points, s=9, color="black", zorder=3,
                     label="proximo, one env" if i == 0 else None)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(x)
    axes.set_xticklabels([textwrap.fill(n, 13) for n in names], fontsize=7)
    axes.set_ylabel("normalized score (random 0, best 1)")
    axes.set_title(f"PPO Table 1 on {len(data['envs'])} MuJoCo v5 tasks")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def register_paper(subparsers: argparse._SubParsersAction) -> None:
    """Add `proximo paper table1` and `proximo paper random`."""

    paper = subparsers.add_parser("paper", help="reproduce the PPO paper's experiments (Table 1)")
    sub = paper.add_subparsers(dest="paper_command", required=True, parser_class=type(paper))
    table = sub.add_parser("table1", help="11 objectives x 7 MuJoCo tasks x seeds, scored as in the paper")
    table.add_argument("--steps", type=int, default=1_000_000, help="env steps per run (paper: 1,000,000)")
    table.add_argument("--seeds", type=int, default=3, help="seeds per setting, 1..N (paper: 3)")
    table.add_argument("--envs", default="all", help="all, or a comma list such as hopper,walker2d")
    table.add_argument("--sweep-dir", type=Path, default=Path("runs/table1"), help="where the runs go")
    table.add_argument("--output", type=Path, metavar="PREFIX",
                       help="also write PREFIX.json, PREFIX.md and PREFIX.png (e.g. benchmarks/results/table1)")
    table.add_argument("--eval-episodes", type=int, default=5,
                       help="deterministic evaluation episodes per run (not part of the paper's score; default 5)")
    table.add_argument("--random-episodes", type=int, default=100, help="episodes of the random policy per env")
    add_cluster_flags(table, pack_default="auto")
    table.set_defaults(handler=cmd_table1)
    rand = sub.add_parser("random", help="measure the random policy's return on the paper's tasks")
    rand.add_argument("--envs", default="all", help="all, or a comma list such as hopper,walker2d")
    rand.add_argument("--episodes", type=int, default=100, help="episodes of the random policy per env (default 100)")
    rand.add_argument("--output", type=Path, help="write the JSON here")
    rand.set_defaults(handler=cmd_random)


def cmd_random(args: argparse.Namespace) -> int:
    """Print (and optionally save) the random policy's return per env."""
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {args.episodes}")
    envs = pick_envs(args.envs)
    result = random_returns(envs, args.episodes, args.output)
    for env_id, r in result.items():
        print(f"{env_id}: random policy {r['mean']:.1f} +- {r['std']:.1f} over {r['episodes']} episodes")
    return 0


def table1_spec(envs: list[str], steps: int, seeds: int, eval_episodes: int):
    """The sweep of the paper's protocol: paper-mujoco preset, the 11 settings, seeds 1..N."""
    if steps < 1 or seeds < 1:
        raise ConfigError(f"--steps and --seeds must be at least 1, got {steps} and {seeds}")
    return SweepSpec(envs=envs, preset="paper-mujoco", base={"total_steps": steps, "eval_episodes": eval_episodes},
                     seeds=list(range(1, seeds + 1)), settings=[dict(s) for _, s in SETTINGS])


def cmd_table1(args: argparse.Namespace) -> int:
    """Run (or resume) the table's sweep, then score it and write the table, the verdict and the figure."""
    # here: every `proximo` command builds this parser, and the runner imports the env makers
    from proximo.sweep.runner import run_sweep

    envs = pick_envs(args.envs)
    spec = table1_spec(envs, args.steps, args.seeds, args.eval_episodes)
    options = run_options(args, f"PPO paper Table 1 runs ({args.steps:,} steps)")
    started = time.time()
    rows = run_sweep(spec, args.sweep_dir, options)
    random = random_returns(envs, args.random_episodes, args.sweep_dir / RANDOM_FILE)
    done = [r for r in rows if r["status"] == "done"]
    import torch

    meta = {"command": options.command, "envs": envs, "steps": args.steps, "seeds": spec.seeds,
            "sweep_dir": str(args.sweep_dir), "trials": len(rows), "trials_done": len(done),
            # a population's agents share its wall time: each population counts once
            "trial_time_s": float(sum(wall for wall in {r.get("population") or r["trial"]: r["wall_time_s"] or 0.0
                                                        for r in done}.values())),
            "populations": len({r["population"] for r in done if r.get("population")}),
            "this_invocation_s": time.time() - started,
            "sps": float(np.mean([r["sps"] for r in done])) if done else math.nan,
            "machine": f"{platform.machine()} {platform.processor() or ''} with "
                       f"{__import__('os').cpu_count()} cores, torch {torch.__version__}".replace("  ", " ")}
    data = report(rows, random, meta, args.sweep_dir)
    prefixes = [args.sweep_dir / "table1"] + ([args.output] if args.output else [])
    for prefix in prefixes:
        atomic_write_json(prefix.with_suffix(".json"), data)
        atomic_write_bytes(prefix.with_suffix(".md"), markdown(data).encode())
        figure(data, prefix.with_suffix(".png"))
    print(markdown(data))
    print(f"wrote {', '.join(str(p.with_suffix('.md')) for p in prefixes)} (+ .json, .png)", file=sys.stderr)
    return 0 if len(done) == len(rows) else 1
