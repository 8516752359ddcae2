"""Connect four (PettingZoo classic connect_four_v3) by self-play with action masks, several seeds.

Each seed is one proximo run directory under --out (a finished run is kept, an unfinished one resumes
from its last checkpoint). Afterwards every league snapshot plays a uniformly random player and the
scripted look-ahead player (proximo/multiagent/play.py), seats alternating, and the curves of win rate
and of the snapshots' openskill ratings are plotted.

    nice -n 10 python benchmarks/selfplay_connect4.py --seeds 1 2 3 --steps 300000

Reference: RLlib's self_play_with_open_spiel.py example on OpenSpiel connect_four trains for 2M
timesteps by default and adds a frozen opponent to its league each time the win rate against random
passes 0.95. The table gives the first snapshot step at which proximo's policy wins 95% against random.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_results  # noqa: E402

ENV = "pettingzoo:pettingzoo.classic.connect_four_v3"
SETTINGS = dict(selfplay=True, num_envs=32, n_steps=128, batch_size=1024, n_epochs=4, learning_rate=3e-4,
                ent_coef=0.01, gamma=0.99, gae_lambda=0.95, net_arch=[128, 128], activation="relu",
                snapshot_every=30_000, opponent_latest=0.5, opponent_sampling="uniform", save_every=40_960,
                eval_episodes=100)


class CheckedPlayer:
    """A PolicyPlayer that counts moves outside the env's action mask."""

    def __init__(self, player, layout) -> None:
        self.player, self.layout, self.moves, self.illegal = player, layout, 0, 0
        self.name = "policy"

    def act(self, env, agent, obs, rng):
        from proximo.multiagent.play import legal_actions

        action = self.player.act(env, agent, obs, rng)
        self.moves += 1
        self.illegal += int(action not in set(legal_actions(self.layout, agent, obs).tolist()))
        return action


def run_one(out: Path, seed: int, steps: int) -> Path:
    """Train (or resume) one seed's run; returns its directory."""
    from proximo.config import PPOConfig
    from proximo.multiagent.trainer import MultiAgentTrainer
    from proximo.saved import list_checkpoints

    run_dir = out / f"selfplay-s{seed}"
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("global_step", 0) >= steps:
        return run_dir
    config = PPOConfig.from_dict({**SETTINGS, "seed": seed, "total_steps": steps})
    trainer = MultiAgentTrainer(ENV, config, run_dir, verbose=False, tensorboard=False)
    checkpoints = list_checkpoints(run_dir) if run_dir.exists() else []
    if checkpoints:
        trainer.load_training_state(checkpoints[-1])
    trainer.train(steps)
    return run_dir


def evaluate_league(run_dir: Path, games_random: int, games_lookahead: int, seed: int) -> list[dict]:
    """Every snapshot (and the final policy) against random and look-ahead players, cached in run_dir."""
    from proximo.config import PPOConfig
    from proximo.multiagent.play import LookaheadPlayer, PolicyPlayer, RandomPlayer, play_match
    from proximo.multiagent.trainer import layout_for
    from proximo.saved import load_policy

    cache = run_dir / "league-eval.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    table = json.loads((run_dir / "league" / "league.json").read_text())
    rows = []
    final_step = json.loads((run_dir / "summary.json").read_text())["global_step"]
    for snap in table["snapshots"] + [{"name": "final", "step": None}]:
        # the final policy changes when a run is continued: its key carries the step it was saved at
        label = f"final@{final_step}" if snap["name"] == "final" else snap["name"]
        key = f"{label}:{games_random}:{games_lookahead}"
        if key not in done:
            folder = run_dir / "policy" if snap["name"] == "final" else run_dir / "league" / snap["name"]
            policy, meta = load_policy(folder)
            maker, layout = layout_for(ENV, {}, PPOConfig.from_dict(meta["config"]))
            player = CheckedPlayer(PolicyPlayer(policy, layout), layout)
            vs_random = play_match(maker, player, RandomPlayer(layout), games_random, seed).summary()
            vs_lookahead = play_match(maker, player, LookaheadPlayer(layout), games_lookahead, seed + 1).summary()
            done[key] = {"vs_random": vs_random, "vs_lookahead": vs_lookahead, "moves": player.moves,
                         "illegal_moves": player.illegal}
            cache.write_text(json.dumps(done, indent=1))
        rows.append({"name": snap["name"], "step": snap["step"], "mu": snap.get("mu"), "sigma": snap.get("sigma"),
                     **done[key]})
    return rows


def plot(curves: dict[int, list[dict]], path: Path) -> None:
    """Win rates against random and look-ahead, and the snapshots' ratings, against training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for seed, rows in curves.items():
        snaps = [r for r in rows if r["step"] is not None]
        steps = [r["step"] for r in snaps]
        axes[0].plot(steps, [r["vs_random"]["win_rate"] for r in snaps], marker=".", label=f"seed {seed}")
        axes[1].plot(steps, [r["vs_lookahead"]["win_rate"] for r in snaps], marker=".", label=f"seed {seed}")
        mu, sigma = np.array([r["mu"] for r in snaps]), np.array([r["sigma"] for r in snaps])
        axes[2].plot(steps, mu, marker=".", label=f"seed {seed}")
        axes[2].fill_between(steps, mu - sigma, mu + sigma, alpha=0.15)
    axes[0].axhline(0.95, color="grey", ls="--", lw=0.8)
    for ax, title in zip(axes, ("win rate vs random", "win rate vs look-ahead", "snapshot rating (openskill mu +- sigma)")):
        ax.set_title(title)
        ax.set_xlabel("agent steps")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=300_000, help="learner moves per run")
    parser.add_argument("--games-random", type=int, default=100)
    parser.add_argument("--games-lookahead", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-connect4"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/selfplay-connect4"))
    args = parser.parse_args()
    curves, runs = {}, {}
    for seed in args.seeds:
        run_dir = run_one(args.out, seed, args.steps)
        rows = evaluate_league(run_dir, args.games_random, args.games_lookahead, seed)
        curves[seed] = rows
        summary = json.loads((run_dir / "summary.json").read_text())
        first = next((r["step"] for r in rows if r["step"] is not None and r["vs_random"]["win_rate"] >= 0.95), None)
        final = rows[-1]
        runs[seed] = {"global_step": summary["global_step"], "wall_time_s": summary["wall_time_s"],
                      "sps": summary["sps"], "first_step_95_vs_random": first,
                      "final_vs_random": final["vs_random"], "final_vs_lookahead": final["vs_lookahead"],
                      "illegal_moves": sum(r["illegal_moves"] for r in rows), "moves": sum(r["moves"] for r in rows)}
        print(seed, runs[seed], flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, args.results.with_suffix(".png"))
    data = {"env": ENV, "settings": SETTINGS, "steps": args.steps, "seeds": args.seeds, "runs": runs,
            "curves": curves, "machine": machine()}
    lines = [f"# Connect four self-play with masks: {len(args.seeds)} seeds x {args.steps:,} learner moves", "",
             f"Each snapshot and the final policy played {args.games_random} games against a random player and "
             f"{args.games_lookahead} against the look-ahead player (seats alternating); rates with 95% Wilson "
             f"intervals. Curves: {args.results.with_suffix('.png').name}.", "",
             "| seed | first step >= 0.95 vs random | final vs random (win, CI) | final vs look-ahead (win / draw / loss) "
             "| illegal moves | agent steps/s |", "|---|---|---|---|---|---|"]
    for seed, r in runs.items():
        rnd, look = r["final_vs_random"], r["final_vs_lookahead"]
        first = f"{r['first_step_95_vs_random']:,}" if r["first_step_95_vs_random"] is not None else "not reached"
        lines.append(f"| {seed} | {first} | {rnd['win_rate']:.2f} [{rnd['win_ci95'][0]:.2f}, {rnd['win_ci95'][1]:.2f}] | "
                     f"{look['win_rate']:.2f} / {look['draw_rate']:.2f} / {look['loss_rate']:.2f} "
                     f"[win CI {look['win_ci95'][0]:.2f}, {look['win_ci95'][1]:.2f}] | {r['illegal_moves']} of "
                     f"{r['moves']:,} | {r['sps']:,.0f} |")
    lines += ["", "Reference: RLlib's OpenSpiel connect_four self-play example, 2M timesteps by default, league grows "
              "when the win rate against random passes 0.95.", "", f"Machine: {data['machine']}"]
    write_results(args.results, data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
