"""MuJoCo quality benchmark: several envs x seeds for 1M steps, beside the published anchors.

    python benchmarks/mujoco_returns.py --preset mujoco --seeds 3 --steps 1000000 --jobs 2

Each run is a `proximo train` subprocess; results go to benchmarks/results/mujoco-<preset>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Published 1M-step returns (shared/BENCHMARKS.md): SB3 rl-zoo tuned, CleanRL ppo_continuous, OpenAI baselines.
ANCHORS = {
    "HalfCheetah-v5": {"sb3_zoo": 5819, "cleanrl": "1443 +- 46", "baselines": 2149},
    "Hopper-v5": {"sb3_zoo": 2410, "cleanrl": "2383 +- 272", "baselines": 2449},
    "Walker2d-v5": {"sb3_zoo": 3479, "cleanrl": "2288 +- 572", "baselines": 3142},
}


def run_one(env_id: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one env/seed in a subprocess and return its summary."""
    run_dir = Path(args.runs) / f"{env_id}-{args.preset}-s{seed}"
    command = [sys.executable, "-m", "proximo.cli", "train", env_id, "--preset", args.preset, "--seed", str(seed),
               "--total-steps", str(args.steps), "--run-dir", str(run_dir), "--quiet", "--no-tensorboard"]
    for item in args.set:
        key, value = item.split("=", 1)
        command += [f"--{key.replace('_', '-')}", value]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-5:])
        raise RuntimeError(f"{env_id} seed {seed} failed:\n{tail}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["process_wall_s"] = time.perf_counter() - start
    summary["run_dir"] = str(run_dir)
    print(f"{env_id} seed {seed}: eval {summary['eval_return_mean']:.0f}, last-100 "
          f"{summary['train_return_last100_mean']:.0f}, {summary['sps']:.0f} steps/s", flush=True)
    return {"env_id": env_id, "seed": seed, **summary}


def table(results: list[dict], args: argparse.Namespace) -> str:
    """Markdown: per env, mean +- std over seeds of eval and last-100 returns, beside the anchors."""
    lines = [f"# proximo on MuJoCo (preset `{args.preset}`, {args.steps:,} steps, seeds {args.seed_list})", "",
             f"Command: `python benchmarks/mujoco_returns.py --preset {args.preset} --steps {args.steps} "
             f"--seeds {len(args.seed_list)}{''.join(' --set ' + s for s in args.set)}`", "",
             "| env | proximo eval (deterministic, 10 ep) | proximo last-100 train episodes | steps/s | "
             "SB3 zoo (tuned) | CleanRL | baselines ppo2 |", "|---|---|---|---|---|---|---|"]
    for env_id in args.env_list:
        rows = [r for r in results if r["env_id"] == env_id]
        if not rows:
            continue
        evals = np.array([r["eval_return_mean"] for r in rows])
        seeds = ",".join(str(r["seed"]) for r in rows)
        last = np.array([r["train_return_last100_mean"] for r in rows])
        sps = np.median([r["sps"] for r in rows])
        anchor = ANCHORS.get(env_id, {})
        lines.append(f"| {env_id} (seeds {seeds}) | {evals.mean():.0f} +- {evals.std():.0f} | {last.mean():.0f} +- {last.std():.0f} | "
                     f"{sps:,.0f} | {anchor.get('sb3_zoo', '')} | {anchor.get('cleanrl', '')} | "
                     f"{anchor.get('baselines', '')} |")
    lines += ["", "Per seed, eval / last-100:", ""]
    for env_id in args.env_list:
        rows = [r for r in results if r["env_id"] == env_id]
        if rows:
            lines.append(f"- {env_id}: " + ", ".join(f"seed {r['seed']} {r['eval_return_mean']:.0f} / "
                                                   f"{r['train_return_last100_mean']:.0f}" for r in rows))
    info = getattr(args, "machine_info", None) or machine()
    lines += ["", f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, Python {info['python']}, "
              f"proximo commit {info.get('proximo_commit', '?')}. "
              "Anchors are the published 1M-step figures in shared/BENCHMARKS.md (v3/v4 envs; these runs use v5).",
              "Std is over seeds (population std)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse flags, run every env x seed (jobs in parallel), write the JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mujoco")
    parser.add_argument("--envs", default="HalfCheetah-v5,Hopper-v5,Walker2d-v5")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one per core)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override passed to every run, e.g. --set learning_rate=1e-4")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench-mujoco"))
    parser.add_argument("--out", default=None, help="results stem (default benchmarks/results/mujoco-<preset>)")
    args = parser.parse_args()
    args.env_list = args.envs.split(",")
    args.seed_list = list(range(1, args.seeds + 1))
    # Seed-major order, so that a benchmark cut short still covers every env.
    jobs = [(env_id, seed) for seed in args.seed_list for env_id in args.env_list]
    stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"mujoco-{args.preset}"
    results: list[dict] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, env_id, seed, args) for env_id, seed in jobs]
        for future in as_completed(futures):
            try:
                results.append(future.result())
            except RuntimeError as exc:  # one failed run must not throw away the others
                print(exc, file=sys.stderr, flush=True)
                continue
            # Rewrite after every finished run: the files always hold what has been measured so far.
            results.sort(key=lambda r: (args.env_list.index(r["env_id"]), r["seed"]))
            markdown = table(results, args)
            write_results(stem, {"preset": args.preset, "steps": args.steps, "seeds": args.seed_list,
                                 "overrides": args.set, "complete": len(results) == len(jobs),
                                 "machine": machine(), "runs": results, "anchors": ANCHORS}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
