"""MPE simple_spread (mpe2, N=3, 25 steps) with IPPO and MAPPO, several seeds, beside the MAPPO reference.

Each (method, seed) is one proximo run directory under --out; a finished run (summary.json) is kept, an
unfinished one resumes from its last checkpoint, so the script can be stopped and started again.

    nice -n 10 python benchmarks/multiagent_mpe.py --seeds 1 2 3 --steps 12000000 --copies 128 --jobs 2

--backend batched (the default) steps the copies with proximo's NumPy twin of simple_spread
(proximo/envs/mpe_spread.py, equal to mpe2's step to the bit in tests/test_mpe_batched.py); --backend sync
steps mpe2 itself, about a tenth of the speed. Either way the evaluation plays mpe2.

Returns: proximo logs each agent's episode return (mpe2's reward with local_ratio 0.5: half the
global distance term, half the agent's own collisions). The MAPPO repository's simple_spread
(marlbenchmark/on-policy, onpolicy/envs/mpe) gives every agent the sum of all agents' rewards, each of
which is the full distance term minus its collisions minus 1 (an agent counts a collision with
itself), and reports average_episode_rewards = mean per-step reward x 25. Over an episode that is
on-policy = 2 x (sum of the three mpe2 agent returns) - 75, which the table also gives.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_results  # noqa: E402

ENV = "pettingzoo:mpe2.simple_spread_v3"
AGENTS = 3
# MAPPO's MPE script settings where proximo has the field (marlbenchmark/on-policy train_mpe.sh: lr 7e-4,
# 10 epochs, one minibatch, entropy 0.01, ReLU, 64 units, episode length 25), 32 copies instead of 128
# rollout threads (2 cores here), feedforward instead of its recurrent default.
SETTINGS = dict(num_envs=32 * AGENTS, n_steps=25, batch_size=32 * AGENTS * 25, n_epochs=10, learning_rate=7e-4,
                ent_coef=0.01, activation="relu", net_arch=[64, 64], normalize_obs=True, gamma=0.99, gae_lambda=0.95,
                clip_range=0.2, max_grad_norm=10.0, save_every=96_000, eval_episodes=100)
METHODS = {"ippo": dict(critic="own"), "mappo": dict(critic="global")}
REFERENCE = ("MAPPO, marlbenchmark/on-policy default script (N=3, 25 steps, 128 threads, 20M env steps = 60M agent "
             "steps): about -120 average episode reward (on-policy scale), the figure the maintainers quote in "
             "issues #49 and #112 of that repository")


def run_one(out: Path, method: str, seed: int, steps: int, backend: str = "batched", copies: int = 32) -> dict:
    """Train (or resume, or read back) one run; returns its summary (this call's seconds in this_call_s)."""
    from proximo.config import PPOConfig
    from proximo.multiagent.trainer import MultiAgentTrainer
    from proximo.saved import list_checkpoints

    run_dir = out / f"{method}-s{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text()).get("global_step", 0) >= steps:
        return json.loads(summary_path.read_text())
    lanes = copies * AGENTS
    rollout = lanes * SETTINGS["n_steps"]  # agent steps per update
    config = PPOConfig.from_dict({**SETTINGS, **METHODS[method], "seed": seed, "total_steps": steps,
                                  "env_backend": backend, "num_envs": lanes, "batch_size": rollout,
                                  "save_every": rollout * max(1, steps // (rollout * 20))})  # about 20 checkpoints
    trainer = MultiAgentTrainer(ENV, config, run_dir, verbose=False, tensorboard=False)
    checkpoints = list_checkpoints(run_dir) if run_dir.exists() else []
    if checkpoints:
        trainer.load_training_state(checkpoints[-1])
    started, began = time.perf_counter(), time.time()
    try:
        summary = trainer.train(steps)
        summary["this_call_s"] = time.perf_counter() - started
    finally:  # every call's wall time, a SIGTERM-stopped one too (it checkpointed): the honest sum over sittings
        with open(run_dir / "sittings.jsonl", "a") as f:
            f.write(json.dumps({"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
                                "wall_s": round(time.perf_counter() - started, 1),
                                "global_step": trainer.global_step}) + "\n")
    return summary


def sitting_seconds(run_dir: Path) -> float:
    """Wall seconds summed over every call that trained this run."""
    path = run_dir / "sittings.jsonl"
    return sum(json.loads(line)["wall_s"] for line in path.read_text().splitlines()) if path.is_file() else 0.0


def _run_and_eval(out: Path, method: str, seed: int, steps: int, backend: str, copies: int,
                  episodes: int) -> dict | None:
    """One run trained (or resumed) and evaluated on mpe2: its table row; None when a signal stopped it short
    (it checkpointed, and the next call resumes it)."""
    try:
        summary = run_one(out, method, seed, steps, backend, copies)
    except KeyboardInterrupt:
        # SIGTERM or SIGINT: the run checkpointed and logged its sitting. A pool worker that caught this would
        # take the next run; leaving the process ends the pool instead, and the parent exits.
        os._exit(1)
    if summary["global_step"] < steps:
        return None
    evaluation = team_eval(out / f"{method}-s{seed}", episodes, seed)
    return {"method": method, "seed": seed, "global_step": summary["global_step"],
            "wall_time_s": sitting_seconds(out / f"{method}-s{seed}"), "sps": summary["sps"],
            "train_agent_return_last100": summary["train_return_last100_mean"], **evaluation}


def team_eval(run_dir: Path, episodes: int, seed: int) -> dict:
    """The saved policy over episodes: mean agent return, team return and the on-policy-scale figure."""
    from proximo.config import PPOConfig
    from proximo.multiagent.play import PolicyPlayer, play_episode
    from proximo.multiagent.trainer import layout_for
    from proximo.saved import load_policy

    policy, meta = load_policy(run_dir)
    maker, layout = layout_for(ENV, {}, PPOConfig.from_dict(meta["config"]))
    player = PolicyPlayer(policy, layout)
    env = maker()
    rng = np.random.default_rng(seed)
    teams = []
    for episode in range(episodes):
        totals = play_episode(env, {a: player for a in env.possible_agents}, 50_000 + episode, rng)
        teams.append(sum(totals.values()))
    teams = np.array(teams)
    return {"agent_return": float(teams.mean() / AGENTS), "team_return": float(teams.mean()),
            "onpolicy_scale": float(2 * teams.mean() - 75), "onpolicy_scale_std": float((2 * teams).std())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=1_200_000, help="agent steps per run (3 per env step)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per run")
    parser.add_argument("--backend", choices=("batched", "sync"), default="batched",
                        help="batched: proximo's NumPy twin of simple_spread; sync: mpe2 itself")
    parser.add_argument("--copies", type=int, default=32, help="copies of the game (the official script: 128)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default runs/bench-mpe-BACKEND-COPIES)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/multiagent-mpe"))
    args = parser.parse_args()
    out = args.out or Path(f"runs/bench-mpe-{args.backend}-{args.copies}")
    jobs = [(out, method, seed, args.steps, args.backend, args.copies, args.episodes)
            for method in args.methods for seed in args.seeds]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = list(pool.map(_run_and_eval, *zip(*jobs)))
    if any(row is None for row in done):
        print("multiagent_mpe: stopped before every run finished; they resume from their checkpoints next time",
              flush=True)
        sys.exit(1)
    rows = {}
    for row in done:
        rows[f"{row['method']}-s{row['seed']}"] = row
        print(row["method"], row["seed"], row, flush=True)
    table = {}
    for method in args.methods:
        picked = [r for r in rows.values() if r["method"] == method]
        table[method] = {key: (float(np.mean([r[key] for r in picked])), float(np.std([r[key] for r in picked])))
                         for key in ("agent_return", "team_return", "onpolicy_scale", "train_agent_return_last100",
                                     "sps")}
    data = {"env": ENV, "settings": SETTINGS, "methods": METHODS, "steps": args.steps, "seeds": args.seeds,
            "backend": args.backend, "copies": args.copies, "jobs": args.jobs,
            "wall_time_s_total": sum(r["wall_time_s"] for r in rows.values()),
            "runs": rows, "table": table, "reference": REFERENCE, "machine": machine()}
    names = " and ".join(m.upper() for m in args.methods)
    budget = (f"The official budget: {args.steps // AGENTS:,} env steps per run, as the MAPPO scripts' 20M"
              if args.steps // AGENTS >= 20_000_000 else
              f"Cut-down: {args.steps // AGENTS:,} env steps per run against the official 20M (about "
              f"{args.steps / AGENTS / 20e6:.1%})")
    lines = [f"# MPE simple_spread (mpe2), {names}, {len(args.seeds)} seeds x {args.steps:,} agent steps "
             f"({args.steps // AGENTS:,} env steps)", "",
             f"Command: `python benchmarks/multiagent_mpe.py --methods {' '.join(args.methods)} --seeds "
             f"{' '.join(map(str, args.seeds))} --steps {args.steps} --backend {args.backend} --copies {args.copies} "
             f"--jobs {args.jobs}`", "",
             f"{budget}; {args.copies} copies"
             + (" (the official 128 threads)" if args.copies == 128 else ", not 128 threads")
             + "; feedforward policy, not the recurrent default; mpe2 1.x, not the repository's own MPE. Trained on "
             + ("proximo's NumPy twin of mpe2's simple_spread (`--env-backend batched`)" if args.backend == "batched"
                else "mpe2 itself") + f", {args.jobs} run(s) at a time on 2 cores; evaluated on mpe2, deterministic, "
             f"{args.episodes} episodes per run; mean +- std over seeds. Wall time summed over every sitting of "
             f"every run: {data['wall_time_s_total'] / 3600:.2f} h.", "",
             "| method | agent return | team return | on-policy scale | train agent return (last 100) | agent steps/s |",
             "|---|---|---|---|---|---|"]
    for method, cols in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{m:.2f} +- {s:.2f}" if key != "sps" else f"{m:,.0f}"
                                                  for key, (m, s) in cols.items()) + " |")
    lines += ["", f"Reference: {REFERENCE}.", "",
              "On-policy scale = 2 x team return - 75 (see the script's docstring for why).", "",
              f"Machine: {data['machine']}"]
    write_results(args.results, data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
