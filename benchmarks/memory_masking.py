"""Memory and legal actions, side by side with sb3-contrib in one run (issue: recurrent policies + masking).

Two tasks, each trial in its own process, the libraries alternating (A B A B) seed by seed:
- memory: proximo/CartPoleNoVel-v1 (CartPole without the velocities). proximo LSTM vs sb3-contrib
  RecurrentPPO with rl-zoo's RecurrentPPO settings for CartPoleNoVel, plus proximo's MLP with the
  same settings to show the task needs memory.
- masking: proximo/TicTacToe-v0 against a random opponent. proximo masked vs sb3-contrib
  MaskablePPO, plus proximo with masking off to show what the masks spare it.
Each trial reports the deterministic evaluation return (mean over --eval-episodes episodes), the
rate of illegal moves in evaluation, and training steps/s (env steps over learn()'s wall time).

    python benchmarks/memory_masking.py [--seeds 3] [--memory-steps 100000] [--masking-steps 50000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# rl-zoo's RecurrentPPO hyperparameters for CartPoleNoVel-v1 (rl-baselines3-zoo hyperparams/ppo_lstm.yml).
MEMORY = dict(num_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
              learning_rate=1e-3, clip_range=0.2, hidden=64, net=[64])
# The same shape of settings for the board game, with a small entropy bonus.
MASKING = dict(num_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.01,
               learning_rate=1e-3, clip_range=0.2, net=[64, 64])
TASKS = {"memory": "proximo/CartPoleNoVel-v1", "masking": "proximo/TicTacToe-v0"}


def _proximo_trial(task: str, variant: str, seed: int, steps: int, eval_episodes: int) -> dict:
    from proximo import PPO

    h = MEMORY if task == "memory" else MASKING
    config = dict(num_envs=h["num_envs"], n_steps=h["n_steps"], batch_size=h["batch_size"], gamma=h["gamma"],
                  gae_lambda=h["gae_lambda"], n_epochs=h["n_epochs"], ent_coef=h["ent_coef"],
                  learning_rate=h["learning_rate"], lr_schedule="linear", clip_range=h["clip_range"],
                  clip_schedule="linear", net_arch=h["net"], seed=seed, total_steps=steps, eval_episodes=1,
                  diagnostics=False, torch_threads=1)
    if task == "memory":
        config.update(activation="relu", ortho_init=False)
        if variant == "lstm":
            config.update(recurrent="lstm", rnn_hidden=h["hidden"])
    elif variant == "unmasked":
        config.update(action_masking="off")
    agent = PPO(TASKS[task], **config)
    start = time.perf_counter()
    agent.learn(steps)
    wall = time.perf_counter() - start

    def act(env, obs, info, state, start_flag):
        masks = env.unwrapped.action_masks() if task == "masking" and variant != "unmasked" else None
        action, state = agent.predict(obs, state=state, episode_start=np.array([start_flag]), action_masks=masks)
        return action, state
    return _score(task, act, eval_episodes, seed) | {"sps": steps / wall, "wall_s": wall,
                                                     "learner": agent._trainer.learner_choice.split(":")[0]}


def _sb3_trial(task: str, seed: int, steps: int, eval_episodes: int) -> dict:
    import gymnasium as gym
    import torch
    from sb3_contrib import MaskablePPO, RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    import proximo.envs.tasks  # noqa: F401  (registers the tasks)

    torch.set_num_threads(1)
    h = MEMORY if task == "memory" else MASKING
    envs = make_vec_env(TASKS[task], n_envs=h["num_envs"], seed=seed)

    def linear(start):
        return lambda progress: progress * start
    common = dict(n_steps=h["n_steps"], batch_size=h["batch_size"], gamma=h["gamma"], gae_lambda=h["gae_lambda"],
                  n_epochs=h["n_epochs"], ent_coef=h["ent_coef"], learning_rate=linear(h["learning_rate"]),
                  clip_range=linear(h["clip_range"]), seed=seed, verbose=0, device="cpu")
    if task == "memory":
        model = RecurrentPPO("MlpLstmPolicy", envs, policy_kwargs=dict(
            ortho_init=False, activation_fn=torch.nn.ReLU, lstm_hidden_size=h["hidden"], enable_critic_lstm=True,
            net_arch=dict(pi=h["net"], vf=h["net"])), **common)
    else:
        model = MaskablePPO("MlpPolicy", envs, policy_kwargs=dict(net_arch=dict(pi=h["net"], vf=h["net"])), **common)
    start = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - start

    def act(env, obs, info, state, start_flag):
        if task == "memory":
            action, state = model.predict(obs[None], state=state, episode_start=np.array([start_flag]),
                                          deterministic=True)
            return action[0], state
        action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks(), deterministic=True)
        return action, None
    del gym
    return _score(task, act, eval_episodes, seed) | {"sps": steps / wall, "wall_s": wall, "learner": "sb3-contrib"}


def _score(task: str, act, episodes: int, seed: int) -> dict:
    """Deterministic returns over `episodes` episodes (seeds 10_000 + seed * 1000 + i) and the illegal-move rate."""
    import gymnasium as gym

    import proximo.envs.tasks  # noqa: F401

    env = gym.make(TASKS[task])
    returns, illegal, moves = [], 0, 0
    for i in range(episodes):
        obs, info = env.reset(seed=10_000 + seed * 1000 + i)
        state, start, total, done = None, True, 0.0, False
        while not done:
            action, state = act(env, obs, info, state, start)
            start = False
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            moves += 1
            illegal += int(info.get("illegal", False))
            done = terminated or truncated
        returns.append(total)
    env.close()
    return {"eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
            "illegal_move_rate": illegal / max(moves, 1), "eval_episodes": episodes}


def one(args) -> None:
    """Run one trial in this process and print its JSON."""
    if args.library == "proximo":
        result = _proximo_trial(args.task, args.variant, args.seed, args.steps, args.eval_episodes)
    else:
        result = _sb3_trial(args.task, args.seed, args.steps, args.eval_episodes)
    print(json.dumps(result))


def main() -> None:
    """Every trial in a subprocess, the libraries alternating per seed; writes benchmarks/results/memory_masking.*."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--memory-steps", type=int, default=100_000)
    parser.add_argument("--masking-steps", type=int, default=50_000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--tasks", default="memory,masking", help="comma-separated: memory, masking")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_masking")
    parser.add_argument("--one", nargs=4, metavar=("LIBRARY", "TASK", "VARIANT", "SEED"))
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    if args.one:
        args.library, args.task, args.variant, seed = args.one
        args.seed = int(seed)
        return one(args)
    from benchmarks.common import machine, write_results

    tasks = args.tasks.split(",")
    plan = []
    for seed in range(1, args.seeds + 1):
        if "memory" in tasks:
            plan += [("proximo", "memory", "lstm", seed), ("sb3-contrib", "memory", "lstm", seed),
                     ("proximo", "memory", "mlp", seed)]
        if "masking" in tasks:
            plan += [("proximo", "masking", "masked", seed), ("sb3-contrib", "masking", "masked", seed),
                     ("proximo", "masking", "unmasked", seed)]
    rows = []
    for library, task, variant, seed in plan:
        steps = args.memory_steps if task == "memory" else args.masking_steps
        command = [sys.executable, __file__, "--one", library, task, variant, str(seed), "--steps", str(steps),
                   "--eval-episodes", str(args.eval_episodes)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{library} {task} {variant} seed {seed} failed:\n{done.stderr[-3000:]}")
        row = {"library": library, "task": task, "variant": variant, "seed": seed, "steps": steps,
               **json.loads(done.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_results(args.out, {"machine": machine(), "memory_settings": MEMORY, "masking_settings": MASKING,
                             "command": " ".join(["python benchmarks/memory_masking.py"] + sys.argv[1:]),
                             "rows": rows}, _markdown(rows, args))


def _markdown(rows: list[dict], args) -> str:
    budget = {"memory": f"--memory-steps {args.memory_steps}", "masking": f"--masking-steps {args.masking_steps}"}
    flags = " ".join(budget[task] for task in args.tasks.split(","))
    lines = ["# Memory and action masking: proximo vs sb3-contrib", "",
             f"`python benchmarks/memory_masking.py --tasks {args.tasks} --seeds {args.seeds} {flags} "
             f"--eval-episodes {args.eval_episodes}`: every trial in its own process, one torch thread, the "
             "libraries alternating seed by seed. steps/s = env steps / learn() wall time; the machine was "
             "shared with other jobs (load average 4-10), so compare the ratio within a seed, not absolute speeds.",
             ""]
    titles = {"memory": f"CartPole without velocities, {args.memory_steps:,} steps",
              "masking": f"TicTacToe vs a random opponent, {args.masking_steps:,} steps"}
    for task in args.tasks.split(","):
        title = titles[task]
        lines += [f"## {title}", "", "| run | eval return (mean +- std over seeds) | per seed | illegal moves | "
                  "steps/s (mean) |", "|---|---|---|---|---|"]
        groups: dict[tuple, list[dict]] = {}
        for row in rows:
            if row["task"] == task:
                groups.setdefault((row["library"], row["variant"]), []).append(row)
        for (library, variant), group in groups.items():
            returns = [r["eval_return_mean"] for r in group]
            lines.append(f"| {library} {variant} | {np.mean(returns):.2f} +- {np.std(returns):.2f} | "
                         f"{', '.join(f'{r:.2f}' for r in returns)} | "
                         f"{np.mean([r['illegal_move_rate'] for r in group]):.1%} | "
                         f"{np.mean([r['sps'] for r in group]):,.0f} |")
        ours, theirs = groups.get(("proximo", "lstm" if task == "memory" else "masked")), groups.get(("sb3-contrib",
                                                                                   "lstm" if task == "memory" else "masked"))
        if ours and theirs:
            ratios = [a["sps"] / b["sps"] for a, b in zip(ours, theirs)]
            lines += ["", f"proximo / sb3-contrib steps/s, seed by seed: {', '.join(f'{r:.2f}x' for r in ratios)} "
                          f"(median {np.median(ratios):.2f}x)."]
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
