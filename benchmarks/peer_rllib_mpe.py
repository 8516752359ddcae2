"""The speed peer for benchmarks/multiagent_mpe.py: RLlib PPO (new API stack) on the same task and settings.

RLlib 2.60 pins gymnasium 1.2.2, so it runs from its own virtual environment, not proximo's:

    python3 -m venv /tmp/rllib-venv
    /tmp/rllib-venv/bin/pip install "torch==2.13.0" "ray[rllib]==2.60.0" "pettingzoo==1.27.0" mpe2
    nice -n 10 /tmp/rllib-venv/bin/python benchmarks/peer_rllib_mpe.py --steps 600000 --seed 1

Same settings as proximo's IPPO row where RLlib has them: one shared policy for the three agents, 32 env
copies in the local env runner (no remote runners: one process, as proximo), 2,400 agent steps per
update (32 x 25 x 3), one minibatch, 10 epochs, lr 7e-4, entropy 0.01, gamma 0.99, lambda 0.95, clip 0.2,
gradient norm 10, 64x64 ReLU networks. It writes JSON and markdown beside proximo's results: agent steps
per second and the mean agent episode return of its last iteration.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600_000, help="agent steps (3 per env step)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/multiagent-mpe-rllib"))
    args = parser.parse_args()
    import ray
    import torch
    from mpe2 import simple_spread_v3
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
    from ray.tune.registry import register_env

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    register_env("spread", lambda _: ParallelPettingZooEnv(simple_spread_v3.parallel_env()))
    config = (PPOConfig()
              .environment("spread")
              .multi_agent(policies={"shared"}, policy_mapping_fn=lambda agent_id, *a, **k: "shared")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=32, rollout_fragment_length=25)
              .training(train_batch_size_per_learner=2400, minibatch_size=2400, num_epochs=10, lr=7e-4,
                        entropy_coeff=0.01, gamma=0.99, lambda_=0.95, clip_param=0.2, grad_clip=10.0)
              .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="relu"))
              .debugging(seed=args.seed))
    algo = config.build_algo()
    started, steps, result = time.perf_counter(), 0, {}
    while steps < args.steps:
        result = algo.train()
        sampled = result["env_runners"]["num_agent_steps_sampled_lifetime"]
        steps = int(sum(sampled.values()) if isinstance(sampled, dict) else sampled)  # per agent id
    elapsed = time.perf_counter() - started
    returns = result["env_runners"].get("agent_episode_returns_mean", {})
    data = {"peer": "rllib", "ray": ray.__version__, "torch": torch.__version__, "steps": steps, "seconds": elapsed,
            "agent_steps_per_s": steps / elapsed, "agent_episode_returns_mean": returns,
            "episode_return_mean": result["env_runners"].get("episode_return_mean"), "seed": args.seed,
            "machine": {"cores": os.cpu_count(), "platform": platform.platform()}}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    mean_agent = sum(returns.values()) / len(returns) if returns else float("nan")
    args.results.with_suffix(".md").write_text(
        f"# RLlib {ray.__version__} PPO on MPE simple_spread (speed peer), seed {args.seed}\n\n"
        f"{steps:,} agent steps in {elapsed:.0f} s: {steps / elapsed:,.0f} agent steps/s; mean agent episode return "
        f"of the last iteration {mean_agent:.2f}. Settings: see benchmarks/peer_rllib_mpe.py. Machine: "
        f"{data['machine']}\n")
    print(json.dumps(data, default=str)[:600])
    ray.shutdown()


if __name__ == "__main__":
    main()
