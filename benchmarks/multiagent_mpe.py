"""MPE simple_spread (mpe2, N=3, 25 steps) with IPPO and MAPPO, several seeds, beside the MAPPO reference.

Each (method, seed) is one proximo run directory under --out; a finished run (summary.json) is kept, an
unfinished one resumes from its last checkpoint, so the script can be stopped and started again.

    nice -n 10 python benchmarks/multiagent_mpe.py --seeds 1 2 3 --steps 1200000

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
import sys
import time
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


def run_one(out: Path, method: str, seed: int, steps: int) -> dict:
    """Train (or resume, or read back) one run; returns its summary plus the converted returns."""
    from proximo.config import PPOConfig
    from proximo.multiagent.trainer import MultiAgentTrainer
    from proximo.saved import list_checkpoints

    run_dir = out / f"{method}-s{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text()).get("global_step", 0) >= steps:
        return json.loads(summary_path.read_text())
    config = PPOConfig.from_dict({**SETTINGS, **METHODS[method], "seed": seed, "total_steps": steps})
    trainer = MultiAgentTrainer(ENV, config, run_dir, verbose=False, tensorboard=False)
    checkpoints = list_checkpoints(run_dir) if run_dir.exists() else []
    if checkpoints:
        trainer.load_training_state(checkpoints[-1])
    started = time.perf_counter()
    summary = trainer.train(steps)
    summary["this_call_s"] = time.perf_counter() - started
    return summary


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
    parser.add_argument("--out", type=Path, default=Path("runs/bench-mpe"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/multiagent-mpe"))
    args = parser.parse_args()
    rows = {}
    for method in args.methods:
        for seed in args.seeds:
            summary = run_one(args.out, method, seed, args.steps)
            evaluation = team_eval(args.out / f"{method}-s{seed}", args.episodes, seed)
            rows[f"{method}-s{seed}"] = {"method": method, "seed": seed, "global_step": summary["global_step"],
                                         "wall_time_s": summary["wall_time_s"], "sps": summary["sps"],
                                         "train_agent_return_last100": summary["train_return_last100_mean"],
                                         **evaluation}
            print(method, seed, rows[f"{method}-s{seed}"], flush=True)
    table = {}
    for method in args.methods:
        picked = [r for r in rows.values() if r["method"] == method]
        table[method] = {key: (float(np.mean([r[key] for r in picked])), float(np.std([r[key] for r in picked])))
                         for key in ("agent_return", "team_return", "onpolicy_scale", "train_agent_return_last100",
                                     "sps")}
    data = {"env": ENV, "settings": SETTINGS, "methods": METHODS, "steps": args.steps, "seeds": args.seeds,
            "runs": rows, "table": table, "reference": REFERENCE, "machine": machine()}
    lines = [f"# MPE simple_spread (mpe2), IPPO and MAPPO, {len(args.seeds)} seeds x {args.steps:,} agent steps "
             f"({args.steps // AGENTS:,} env steps)", "",
             f"Cut-down: {args.steps // AGENTS:,} env steps per run against the official 20M (about "
             f"{args.steps / AGENTS / 20e6:.1%}); 32 copies, not 128 threads; feedforward policy, not the recurrent "
             "default; mpe2 1.x, not the repository's own MPE. Deterministic evaluation over "
             f"{args.episodes} episodes per run; mean +- std over seeds.", "",
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
