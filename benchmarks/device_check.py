"""The GPU check of the devices work, as one short script for a machine with an accelerator.

    python benchmarks/device_check.py                 # cuda when torch sees one, else cpu only
    python benchmarks/device_check.py --device cpu    # a smoke run of the same steps on the CPU

1. trains CartPole-v1 (cartpole preset) and HalfCheetah-v5 (mujoco preset) briefly on the device;
2. saves the device-trained policy, loads it on the CPU and checks its deterministic actions match;
3. times ppo_update on the device against the CPU for three policy sizes (the mujoco MLP, a wide
   MLP and the Nature CNN on 84x84 frames), each on a rollout of its preset's shape.
Prints one line per result and writes them as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gymnasium import spaces  # noqa: E402

from proximo.config import make_config  # noqa: E402
from proximo.learners.choose import choose_learner  # noqa: E402
from proximo.ppo import UpdateSettings, ppo_update  # noqa: E402
from proximo.rollout import RolloutBuffer  # noqa: E402
from proximo.train import Trainer, build_policy, load_policy, make_adam, save_policy  # noqa: E402


def train_briefly(env_id: str, preset: str, device: str, steps: int) -> dict:
    """A short run on device; returns steps/s, eval and what the run chose."""
    config = make_config(preset, total_steps=steps, device=device, eval_episodes=3)
    trainer = Trainer(env_id, config, run_dir=None, verbose=False, tensorboard=False)
    summary = trainer.train()
    with tempfile.TemporaryDirectory() as folder:
        save_policy(Path(folder), trainer.policy, config, env_id)
        on_cpu, _ = load_policy(Path(folder))
    obs = torch.as_tensor(trainer.envs.observation_space.sample()[:1], dtype=torch.float32)
    with torch.inference_mode():
        here = trainer.policy.act(trainer.policy.prepare_encoded(obs), deterministic=True)[0].cpu()
        there = on_cpu.act(on_cpu.prepare_encoded(obs), deterministic=True)[0]
    return {"env": env_id, "device": summary["device"], "learner": summary["learner"], "sps": round(summary["sps"]),
            "eval_return": round(summary["eval_return_mean"], 1),
            "loads_on_cpu": on_cpu.device.type == "cpu",
            "same_action_on_cpu": bool(torch.allclose(here.float(), there.float(), atol=1e-4))}


def time_update(name: str, obs_space, action_space, preset: str, overrides: dict, device: str, repeats: int) -> float:
    """Median seconds of one ppo_update on device for a random rollout of the preset's shape."""
    config = make_config(preset, device=device, **overrides)
    torch.manual_seed(0)
    policy = build_policy(obs_space, action_space, config).to(device)
    optimizer = make_adam(policy, config)
    learner, _ = choose_learner(policy, optimizer, "torch")
    buffer = RolloutBuffer.allocate(config.n_steps, config.num_envs, policy)
    if policy.image:
        buffer.obs.random_(0, 256)
    else:
        buffer.obs.normal_()
    with torch.no_grad():
        actions, log_probs, values = policy.act(policy.normalize(buffer.obs.flatten(0, 1)))
    buffer.actions.copy_(actions.view_as(buffer.actions))
    buffer.log_probs.copy_(log_probs.view_as(buffer.log_probs))
    buffer.values.copy_(values.view_as(buffer.values))
    buffer.rewards.normal_()
    buffer.compute_advantages(config.gamma, config.gae_lambda)
    settings = UpdateSettings(n_epochs=config.n_epochs, batch_size=config.batch_size, objective=config.objective,
                              clip_range=config.clip_range, clip_range_vf=config.clip_range_vf,
                              kl_coef=config.kl_coef, ent_coef=config.ent_coef, vf_coef=config.vf_coef,
                              max_grad_norm=config.max_grad_norm, target_kl=config.target_kl,
                              normalize_advantage=config.normalize_advantage)
    times = []
    for _ in range(repeats + 1):  # the first one warms up kernels and caches
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        ppo_update(learner, buffer, settings)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "device_check.json")
    args = parser.parse_args()
    results: dict = {"device": args.device, "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "runs": [],
                     "update_s": []}
    for env_id, preset in (("CartPole-v1", "cartpole"), ("HalfCheetah-v5", "mujoco")):
        row = train_briefly(env_id, preset, args.device, args.steps)
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    box = spaces.Box(-1, 1, (17,))
    cases = [("mujoco MLP 256x256", box, spaces.Box(-1, 1, (6,)), "mujoco", {}),
             ("wide MLP 1024x1024", box, spaces.Box(-1, 1, (6,)), "mujoco", {"net_arch": [1024, 1024]}),
             ("Nature CNN 4x84x84", spaces.Box(0, 255, (4, 84, 84), dtype="uint8"), spaces.Discrete(6),
              "paper-atari", {})]
    for name, obs_space, action_space, preset, overrides in cases:
        row = {"policy": name,
               "cpu_s": time_update(name, obs_space, action_space, preset, overrides, "cpu", args.repeats)}
        if args.device != "cpu":
            row[f"{args.device}_s"] = time_update(name, obs_space, action_space, preset, overrides, args.device,
                                                  args.repeats)
            row["speedup"] = round(row["cpu_s"] / row[f"{args.device}_s"], 2)
        results["update_s"].append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
