"""Agent steps per second on MPE simple_spread: proximo (IPPO settings of benchmarks/multiagent_mpe.py) against
RLlib PPO (benchmarks/peer_rllib_mpe.py, its own virtual environment), alternating, in one run.

proximo runs twice per repeat: stepping mpe2 itself (`--env-backend sync`, the same env RLlib steps) and
stepping its NumPy twin of simple_spread (`--env-backend batched`, proximo/envs/mpe_spread.py).

    nice -n 10 python benchmarks/multiagent_speed.py --rllib-python /tmp/rllib-venv/bin/python --steps 48000 --repeats 3

Each repeat trains proximo, then RLlib, for --steps agent steps from scratch (start-up excluded on both
sides: proximo times train(), RLlib its train() loop); the ratio is the median over repeats.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_results  # noqa: E402
from benchmarks.multiagent_mpe import ENV, METHODS, SETTINGS  # noqa: E402


def proximo_sps(steps: int, seed: int, backend: str = "sync") -> float:
    """proximo's agent steps per second over one training of `steps` agent steps on backend (sync | batched)."""
    from proximo.config import PPOConfig
    from proximo.multiagent.trainer import MultiAgentTrainer

    config = PPOConfig.from_dict({**SETTINGS, **METHODS["ippo"], "seed": seed, "total_steps": steps, "save_every": 0,
                                  "eval_episodes": 1, "env_backend": backend})
    trainer = MultiAgentTrainer(ENV, config, None, verbose=False, tensorboard=False)
    started = time.perf_counter()
    trainer.train(steps)
    return trainer.global_step / (time.perf_counter() - started)


def rllib_sps(python: str, steps: int, seed: int) -> float:
    """RLlib's agent steps per second (its script's own timing of the train() loop)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "peer"
        script = Path(__file__).resolve().parent / "peer_rllib_mpe.py"
        subprocess.run([python, str(script), "--steps", str(steps), "--seed", str(seed), "--results", str(out)],
                       check=True, capture_output=True, timeout=3600)
        return json.loads(out.with_suffix(".json").read_text())["agent_steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rllib-python", required=True)
    parser.add_argument("--steps", type=int, default=48_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conditions", default="not stated (pass --conditions: quiet machine, or what else ran)",
                        help="what else the machine ran, written under the table (a ratio taken beside other jobs is "
                             "provisional)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/multiagent-speed"))
    args = parser.parse_args()
    pairs = []
    for repeat in range(args.repeats):
        mine = proximo_sps(args.steps, repeat + 1)
        twin = proximo_sps(args.steps, repeat + 1, "batched")
        peer = rllib_sps(args.rllib_python, args.steps, repeat + 1)
        pairs.append({"proximo": mine, "proximo_batched": twin, "rllib": peer, "ratio": mine / peer,
                      "ratio_batched": twin / peer})
        print(pairs[-1], flush=True)
    ratio = float(np.median([p["ratio"] for p in pairs]))
    ratio_batched = float(np.median([p["ratio_batched"] for p in pairs]))
    data = {"env": ENV, "steps": args.steps, "pairs": pairs, "median_ratio": ratio,
            "median_ratio_batched": ratio_batched, "machine": machine(), "conditions": args.conditions}
    lines = [f"# Agent steps/s on MPE simple_spread: proximo vs RLlib PPO ({args.repeats} alternating rounds of "
             f"{args.steps:,} agent steps)", "",
             "Command: `python benchmarks/multiagent_speed.py --rllib-python PYTHON --steps "
             f"{args.steps} --repeats {args.repeats}`", "",
             "proximo on mpe2 steps the same env as RLlib; proximo on its twin steps proximo's NumPy simple_spread "
             "(`--env-backend batched`, equal to mpe2's step in tests/test_mpe_batched.py).", "",
             "| repeat | proximo on mpe2 | proximo on its twin | RLlib | mpe2 ratio | twin ratio |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {p['proximo']:,.0f} | {p['proximo_batched']:,.0f} | {p['rllib']:,.0f} | "
              f"{p['ratio']:.2f}x | {p['ratio_batched']:.2f}x |" for i, p in enumerate(pairs)]
    lines += ["", f"Median ratios: {ratio:.2f}x on mpe2, {ratio_batched:.2f}x on the twin. Conditions: "
              f"{args.conditions}", "", f"Machine: {data['machine']}"]
    write_results(args.results, data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
