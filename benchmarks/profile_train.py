"""Where a proximo training run spends its wall time: env stepping, the rest of the rollout, GAE,
the update, and everything else.

    python benchmarks/profile_train.py                          # the throughput cases, 1 thread
    python benchmarks/profile_train.py --cases cartpole --steps 50000

It wraps the collector's vector env step, the collector, GAE and ppo_update with wall-clock timers
(a few hundred ns per call, so the split is close to an unwrapped run) and trains one seed.
Results go to benchmarks/results/profile.{json,md} (or --out/--tag).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, timed, write_results  # noqa: E402
from throughput import CASES  # noqa: E402


def profile_case(name: str, steps: int, seed: int, threads: int) -> dict:
    """Train one case with timers around its parts; returns seconds per part and steps/s."""
    import proximo.rollout as rollout
    import proximo.train as train
    from proximo.config import make_config

    case = CASES[name]
    seconds = dict(env_step=0.0, collect=0.0, gae=0.0, update=0.0)

    original_collect, original_gae, original_update = (rollout.RolloutCollector.collect,
                                                       rollout.RolloutBuffer.compute_advantages, train.ppo_update)
    rollout.RolloutCollector.collect = timed(seconds, "collect", original_collect)
    rollout.RolloutBuffer.compute_advantages = timed(seconds, "gae", original_gae)
    train.ppo_update = timed(seconds, "update", original_update)
    try:
        config = make_config(case["preset"], seed=seed, total_steps=steps, num_envs=case["envs"],
                             torch_threads=threads, eval_episodes=1)
        trainer = train.Trainer(case["env_id"], config, run_dir=None, verbose=False, tensorboard=False)
        trainer.envs.step = timed(seconds, "env_step", trainer.envs.step)
        summary = trainer.train(steps)
    finally:
        rollout.RolloutCollector.collect = original_collect
        rollout.RolloutBuffer.compute_advantages = original_gae
        train.ppo_update = original_update
    wall = summary["wall_time_s"]
    parts = {
        "env step (vector env, simulator included)": seconds["env_step"],
        "rollout besides the env (actor, buffers, bookkeeping)": seconds["collect"] - seconds["env_step"],
        "GAE": seconds["gae"],
        "PPO update (K epochs of minibatch Adam)": seconds["update"],
        "other (logging, diagnostics, schedules)": wall - seconds["collect"] - seconds["gae"] - seconds["update"],
    }
    return dict(case=name, env_id=case["env_id"], preset=case["preset"], steps=summary["global_step"],
                wall_s=wall, steps_per_s=summary["global_step"] / wall, parts=parts)


def markdown(results: list[dict], info: dict, command: str) -> str:
    """The results as a markdown report."""
    lines = ["# Where proximo's training time goes", "", f"Command: `{command}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, torch {info['torch']}, "
             f"commit {info['proximo_commit']}; one seed per case.", ""]
    for result in results:
        lines += [f"## {result['case']}: {result['env_id']}, preset `{result['preset']}`, "
                  f"{result['steps']:,} steps in {result['wall_s']:.1f} s ({result['steps_per_s']:,.0f} steps/s)", "",
                  "| part | seconds | share | microseconds per env step |", "|---|---|---|---|"]
        for part, value in result["parts"].items():
            lines.append(f"| {part} | {value:.2f} | {100 * value / result['wall_s']:.0f}% | "
                         f"{1e6 * value / result['steps']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="cartpole,halfcheetah", help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=0, help="env steps per case (0: the case's default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    results = [profile_case(name, args.steps or CASES[name]["steps"], args.seed, args.threads) for name in names]
    command = "python benchmarks/profile_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(results, machine(), command.strip())
    stem = args.out / ("profile" + (f"-{args.tag}" if args.tag else ""))
    write_results(stem, {"command": command.strip(), "machine": machine(), "results": results}, report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
