"""The GPU check for Atari: train Pong with paper-atari on `--device cuda` for a fixed wall time, report steps/s.

    python benchmarks/atari_gpu.py --minutes 8                 # on a machine with a GPU (the device tool's)
    python benchmarks/atari_gpu.py --minutes 1 --device cpu    # the same script, to check it here first

It trains ALE/Pong-v5 with the paper-atari preset (8 envs; async vector env when the machine has
the cores) and stops after --minutes of training, then prints and writes one JSON line with the
steps/s, the steps reached, and the mean of the last 100 whole games (Pong starts at -21), beside
the published anchors: CleanRL ppo_atari, Pong 20.4 / Breakout 415 at 10M steps at ~600 steps/s on a
GPU; LeanRL (torch.compile + CUDA graphs) 6,809 fps on an H100. The annealing horizon stays 10M
steps, as in a full run, so the first minutes are the start of the paper's schedule.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANCHORS = {"cleanrl_ppo_atari": "Pong 20.4, Breakout 415 at 10M steps, ~600 steps/s on a GPU",
           "leanrl_h100": "6,809 fps with torch.compile + CUDA graphs"}


def main() -> None:
    """Train for the wall time given, then print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--env", default="ALE/Pong-v5")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "results"))
                        / "atari-gpu.json")
    args = parser.parse_args()

    from proximo.config import make_config
    from proximo.train import Trainer, TrainingInterrupted

    backend = "async" if (os.cpu_count() or 1) >= 8 else "sync"
    config = make_config("paper-atari", device=args.device, env_backend=backend, eval_episodes=1,
                         torch_threads=min(4, os.cpu_count() or 1))
    trainer = Trainer(args.env, config, run_dir=None, verbose=False, tensorboard=False)
    deadline = time.perf_counter() + 60 * args.minutes
    collect = trainer.collector.collect

    def collect_until_deadline():
        if time.perf_counter() > deadline:
            trainer.request_stop()  # stops after this update
        return collect()
    trainer.collector.collect = collect_until_deadline
    start = time.perf_counter()
    try:
        trainer.train(config.total_steps)
    except TrainingInterrupted:
        pass
    elapsed = time.perf_counter() - start
    stats = trainer.last_stats
    last100 = stats.get("episode_return_mean")
    result = dict(env=args.env, device=trainer.device_choice, learner=trainer.learner_choice, env_backend=backend,
                  minutes=args.minutes, steps=trainer.global_step, train_s=elapsed,
                  sps=trainer.global_step / elapsed, last100_games=last100 if last100 == last100 else None,  # NaN: no game ended yet
                  games=stats.get("episodes"), anchors=ANCHORS)
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
