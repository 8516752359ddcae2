"""One short training run of a fixed case, for whole-process before/after timings of a change (two checkouts,
each timed in turn): `OMP_NUM_THREADS=1 python benchmarks/train_case.py CHECKOUT CASE` imports proximo from
CHECKOUT and trains CASE with one torch and BLAS thread, no diagnostics and a one-episode evaluation.
Used by results/hotpath-malloc.md."""
from __future__ import annotations

import sys

CASES = {  # name: (env id, PPO keywords)
    "pop16": ("CartPole-v1", dict(preset="cartpole", seeds=list(range(1, 17)), total_steps=20_480)),
    "cartpole": ("CartPole-v1", dict(preset="cartpole", seed=1, total_steps=30_000)),
    "cheetah16": ("HalfCheetah-v5", dict(preset="paper-mujoco", seeds=list(range(1, 17)), total_steps=4_096)),
    "cheetah": ("HalfCheetah-v5", dict(preset="paper-mujoco", seed=1, total_steps=16_384)),
    "minatar": ("MinAtar/Breakout-v1", dict(preset="minatar", seed=1, total_steps=50_000)),
}


def main() -> None:
    """Train the case named on the command line with the checkout named before it."""
    checkout, case = sys.argv[1], sys.argv[2]
    sys.path.insert(0, checkout)
    import torch

    from proximo import PPO

    torch.set_num_threads(1)
    env, kwargs = CASES[case]
    agent = PPO(env, eval_episodes=1, diagnostics=False, torch_threads=1, **kwargs)
    agent.learn(kwargs["total_steps"])


if __name__ == "__main__":
    main()
