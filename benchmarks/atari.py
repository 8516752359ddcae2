"""Pixels, measured: MinAtar returns and Atari throughput against Stable-Baselines3, the vector envs, memory.

    python benchmarks/atari.py minatar --steps 150000 --seeds 1 2 3      # MinAtar Breakout + SpaceInvaders
    python benchmarks/atari.py minatar-sps --steps 50000 --repeats 3     # MinAtar steps/s: NumPy CNN, torch, SB3
    python benchmarks/atari.py atari-sps --steps 3072 --repeats 3        # Pong + Breakout, paper-atari
    python benchmarks/atari.py vecenv --steps 400 --repeats 3            # gymnasium sync / async, envpool
    python benchmarks/atari.py memory                                    # bytes per stored transition

Every measurement runs in a fresh interpreter (a subprocess of this script), one at a time, with
the sides alternating (proximo, SB3, proximo, SB3, ...) so that drifts in machine load hit both
alike; torch and BLAS get one thread. SB3 runs the same hyperparameters and the same network:
for Atari its CnnPolicy (Nature conv torso, shared 512 ReLU layer, linear heads, as paper-atari),
for MinAtar a features extractor with MinAtar's torso (16x3x3 conv, 128 ReLU units, shared).
Both log the true returns of whole episodes (SB3's Monitor sits under its Atari wrappers too).
Results: benchmarks/results/atari-<section>.json and .md (minatar also a PNG of the curves).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import machine, write_results  # noqa: E402

RESULTS = HERE / "results"
MINATAR_GAMES = {"Breakout": "MinAtar/Breakout-v1", "SpaceInvaders": "MinAtar/SpaceInvaders-v1"}
ATARI_GAMES = {"Pong": "ALE/Pong-v5", "Breakout": "ALE/Breakout-v5"}


# ---------------------------------------------------------------------------------------------
# the same hyperparameters on both sides
# ---------------------------------------------------------------------------------------------
def _sb3_kwargs(preset: str) -> dict:
    """SB3 PPO keyword arguments meaning what the proximo preset means (schedules as callables)."""
    from proximo.config import PRESETS

    p = PRESETS[preset]

    def schedule(value, kind):
        return (lambda remaining: remaining * value) if kind == "linear" else value
    return dict(n_steps=p["n_steps"], batch_size=p["batch_size"], n_epochs=p["n_epochs"], gamma=p["gamma"],
                gae_lambda=p["gae_lambda"], learning_rate=schedule(p["learning_rate"], p["lr_schedule"]),
                clip_range=schedule(p["clip_range"], p["clip_schedule"]), ent_coef=p["ent_coef"],
                vf_coef=p["vf_coef"], max_grad_norm=p["max_grad_norm"])


def _set_threads() -> None:
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")


# ---------------------------------------------------------------------------------------------
# workers (each in its own interpreter, prints one JSON line)
# ---------------------------------------------------------------------------------------------
def worker_proximo(env_id: str, preset: str, seed: int, steps: int, eval_episodes: int, learner: str = "auto") -> dict:
    """Train proximo (learner: auto, or torch to force autograd and torch rollouts); returns timing, the
    learner it ran, the curve (step, last-100 return) and the final evaluation."""
    _set_threads()
    from proximo.config import make_config
    from proximo.train import Trainer

    config = make_config(preset, seed=seed, total_steps=steps, torch_threads=1, eval_episodes=max(eval_episodes, 1),
                         learner=learner)
    trainer = Trainer(env_id, config, run_dir=None, verbose=False, tensorboard=False)
    curve = []
    collect = trainer.collector.collect

    def collect_and_log():  # the curve point of the update before this rollout
        if trainer.last_stats:
            curve.append((trainer.global_step, trainer.last_stats["episode_return_mean"]))
        return collect()
    trainer.collector.collect = collect_and_log
    summary = trainer.train(steps)
    curve.append((trainer.global_step, trainer.last_stats["episode_return_mean"]))
    return dict(steps=summary["global_step"], train_s=summary["wall_time_s"],
                sps=summary["global_step"] / summary["wall_time_s"], learner=trainer.learner_choice,
                eval_return=summary["eval_return_mean"] if eval_episodes else None,
                last100=summary["train_return_last100_mean"], episodes=summary["episodes"], curve=curve)


def _minatar_extractor():
    import torch
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from torch import nn

    class MinAtarExtractor(BaseFeaturesExtractor):
        """MinAtar's torso for SB3: 16x3x3 conv, ReLU, flatten, 128 ReLU units (proximo: MinAtarCNN + net_arch [128])."""

        def __init__(self, observation_space, features_dim: int = 128) -> None:
            super().__init__(observation_space, features_dim)
            channels = observation_space.shape[0]
            self.cnn = nn.Sequential(nn.Conv2d(channels, 16, 3, stride=1), nn.ReLU(), nn.Flatten())
            with torch.no_grad():
                flat = self.cnn(torch.zeros(1, *observation_space.shape)).shape[1]
            self.linear = nn.Sequential(nn.Linear(flat, features_dim), nn.ReLU())

        def forward(self, observations):
            return self.linear(self.cnn(observations))
    return MinAtarExtractor


def worker_sb3(env_id: str, preset: str, seed: int, steps: int, eval_episodes: int) -> dict:
    """Train SB3's PPO with the same settings and network; returns timing, curve and evaluation."""
    _set_threads()
    import numpy as np
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from proximo.config import PRESETS

    n_envs = PRESETS[preset]["num_envs"]
    if env_id.startswith("ALE/"):
        import ale_py
        import gymnasium as gym
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack

        gym.register_envs(ale_py)
        # frameskip 1 underneath: SB3's AtariWrapper skips 4 with a max-pool, as proximo's pipeline does.
        venv = VecFrameStack(make_atari_env(env_id, n_envs=n_envs, seed=seed,
                                            env_kwargs=dict(frameskip=1, repeat_action_probability=0.0)), 4)
        policy_kwargs = {}  # CnnPolicy: NatureCNN (512 ReLU), shared, net_arch [] -> the paper's network
    else:
        from stable_baselines3.common.env_util import make_vec_env

        from proximo.envs.make import make_single_env
        venv = make_vec_env(lambda: make_single_env(env_id), n_envs=n_envs, seed=seed)
        policy_kwargs = dict(features_extractor_class=_minatar_extractor(), net_arch=[])
    curve = []

    class Curve(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            buffer = self.model.ep_info_buffer
            if self.num_timesteps:
                curve.append((self.num_timesteps, float(np.mean([e["r"] for e in buffer])) if buffer else None))
    model = PPO("CnnPolicy", venv, seed=seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs,
                **_sb3_kwargs(preset))
    start = time.perf_counter()
    model.learn(total_timesteps=steps, callback=Curve())
    train_s = time.perf_counter() - start
    buffer = model.ep_info_buffer
    last100 = float(np.mean([e["r"] for e in buffer])) if buffer else float("nan")
    curve.append((int(model.num_timesteps), last100))
    result = dict(steps=int(model.num_timesteps), train_s=train_s, sps=model.num_timesteps / train_s,
                  last100=last100, curve=curve, eval_return=None)
    if eval_episodes:
        result["eval_return"] = _evaluate_sb3(model, env_id, seed, eval_episodes)
    return result


def _evaluate_sb3(model, env_id: str, seed: int, episodes: int) -> float:
    """Deterministic returns of SB3's policy on proximo's evaluation env (the same episode seeds as proximo's)."""
    import numpy as np

    from proximo.envs.make import make_single_env
    env = make_single_env(env_id)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + 10_000 + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def worker_vecenv(kind: str, steps: int) -> dict:
    """Random-action steps/s of 8 Pong envs: proximo's gymnasium pipeline (sync/async) or envpool's own."""
    import numpy as np
    n = 8
    if kind.startswith("envpool"):
        import envpool
        env = envpool.make("Pong-v5", env_type="gymnasium", num_envs=n, seed=1, num_threads=int(kind.split("-")[1]),
                           repeat_action_probability=0.0, episodic_life=True, reward_clip=True, noop_max=30)
        env.reset()
    else:
        from proximo.envs.atari import PixelOptions
        from proximo.envs.make import make_vector_env
        env = make_vector_env("ALE/Pong-v5", n, kind, pixels=PixelOptions(episodic_life=True, sign_rewards=True))
        env.reset(seed=1)
    actions = np.random.default_rng(0).integers(0, 6, (steps + 20, n))
    for a in actions[:20]:
        env.step(a)
    start = time.perf_counter()
    for a in actions[20:]:
        env.step(a)
    elapsed = time.perf_counter() - start
    env.close()
    return dict(sps=n * steps / elapsed)


def worker_memory() -> dict:
    """Bytes per stored transition and the process's peak memory around an 8 x 128 paper-atari rollout."""
    _set_threads()
    import resource

    import torch

    from proximo.config import make_config
    from proximo.train import Trainer

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    config = make_config("paper-atari", eval_episodes=1)
    trainer = Trainer("ALE/Pong-v5", config, run_dir=None, verbose=False, tensorboard=False)
    buffer = trainer.collector.buffer
    tensors = {name: getattr(buffer, name) for name in ("obs", "actions", "log_probs", "values", "rewards",
                                                        "terminated", "truncated", "next_values", "advantages",
                                                        "returns")}
    per_transition = {name: t.element_size() * t[0, 0].numel() for name, t in tensors.items()}
    before = peak_mib()
    trainer.collector.collect()
    after_rollout = peak_mib()
    trainer.train(config.rollout_size)  # one more rollout and one update
    after_update = peak_mib()
    obs = tensors["obs"]
    return dict(obs_dtype=str(obs.dtype), obs_shape=list(obs.shape), bytes_per_transition=sum(per_transition.values()),
                bytes_by_field=per_transition, float32_obs_bytes=obs[0, 0].numel() * 4,
                buffer_mib=sum(t.element_size() * t.numel() for t in tensors.values()) / 2**20,
                peak_rss_before_mib=before, peak_rss_after_rollout_mib=after_rollout,
                peak_rss_after_update_mib=after_update, torch=torch.__version__)


WORKERS = {"proximo": worker_proximo, "sb3": worker_sb3, "vecenv": worker_vecenv, "memory": worker_memory}


def run_worker(name: str, **kwargs) -> dict:
    """Run one worker in a fresh interpreter and return its JSON line."""
    command = [sys.executable, __file__, "--worker", name, json.dumps(kwargs)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"worker {name} {kwargs} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def section_minatar(args, command: str) -> None:
    runs = []
    for game in args.games:
        for seed in args.seeds:
            for side in ("proximo", "sb3"):
                result = run_worker(side, env_id=MINATAR_GAMES[game], preset="minatar", seed=seed, steps=args.steps,
                                    eval_episodes=args.eval_episodes)
                runs.append(dict(game=game, seed=seed, side=side, **result))
                print(f"{game} seed {seed} {side}: last-100 {result['last100']:.2f}  {result['sps']:,.0f} steps/s",
                      flush=True)
    rows = []
    for game in args.games:
        row = {"game": game}
        for side in ("proximo", "sb3"):
            mine = [r for r in runs if r["game"] == game and r["side"] == side]
            row[side] = dict(last100=_mean_std([r["last100"] for r in mine]),
                             eval=_mean_std([r["eval_return"] for r in mine]),
                             sps=_median([r["sps"] for r in mine]))
        row["sps_ratio"] = row["proximo"]["sps"] / row["sb3"]["sps"]
        rows.append(row)
    png = RESULTS / "atari-minatar.png"
    _plot_curves(runs, args.games, png)
    lines = [f"# MinAtar: proximo vs SB3 PPO, {args.steps:,} steps, seeds {args.seeds}", "",
             f"`{command}`", "",
             "Preset `minatar` on both sides (8 envs x 128, 4 epochs, minibatch 256, lr 2.5e-4 annealed, clip 0.2, "
             "entropy 0.01, vf 0.5; MinAtar's network: 16x3x3 conv, 128 ReLU, shared; SB3 through a features "
             "extractor of the same layers). One thread, fresh process per run, sides alternating. Returns are "
             "the mean of the last 100 training episodes (true returns), mean +- std over seeds; eval is "
             f"{args.eval_episodes} deterministic episodes.", "",
             "| game | proximo last-100 | SB3 last-100 | proximo eval | SB3 eval | proximo steps/s | SB3 steps/s "
             "| proximo / SB3 |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        p, s = row["proximo"], row["sb3"]
        lines.append(f"| {row['game']} | {p['last100'][0]:.2f} +- {p['last100'][1]:.2f} | "
                     f"{s['last100'][0]:.2f} +- {s['last100'][1]:.2f} | {p['eval'][0]:.2f} +- {p['eval'][1]:.2f} | "
                     f"{s['eval'][0]:.2f} +- {s['eval'][1]:.2f} | {p['sps']:,.0f} | {s['sps']:,.0f} | "
                     f"{row['sps_ratio']:.2f}x |")
    lines += ["", "Per run:", "", "| game | seed | side | last-100 | eval | steps/s | train s |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        ev = "" if r["eval_return"] is None else f"{r['eval_return']:.2f}"
        lines.append(f"| {r['game']} | {r['seed']} | {r['side']} | {r['last100']:.2f} | {ev} | {r['sps']:,.0f} | "
                     f"{r['train_s']:.0f} |")
    lines += ["", f"Curves: [{png.name}]({png.name})", ""]
    write_results(RESULTS / "atari-minatar", dict(command=command, machine=machine(), steps=args.steps,
                                                  seeds=args.seeds, rows=rows, runs=runs), "\n".join(lines))


def _plot_curves(runs, games, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(games), figsize=(5.5 * len(games), 4), squeeze=False)
    for ax, game in zip(axes[0], games):
        for side, colour in (("proximo", "tab:blue"), ("sb3", "tab:orange")):
            mine = [r for r in runs if r["game"] == game and r["side"] == side]
            if not mine:
                continue
            grid = np.linspace(0, min(r["curve"][-1][0] for r in mine), 60)
            ys = []
            for r in mine:
                xs = np.array([x for x, y in r["curve"] if y is not None and y == y], dtype=float)
                vs = np.array([y for x, y in r["curve"] if y is not None and y == y], dtype=float)
                ys.append(np.interp(grid, xs, vs, left=np.nan))
            ys = np.array(ys)
            mean, low, high = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
            ax.plot(grid, mean, color=colour, label=f"{side} (mean of {len(mine)} seeds)")
            ax.fill_between(grid, low, high, color=colour, alpha=0.2)
        ax.set_title(f"MinAtar {game}")
        ax.set_xlabel("env steps")
        ax.set_ylabel("return, last 100 training episodes")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


MINATAR_SPS_SIDES = {  # side -> (worker, its keyword arguments beyond the common ones)
    "proximo": ("proximo", {}),                      # auto: the NumPy CNN path (learner and rollouts)
    "proximo-torch": ("proximo", {"learner": "torch"}),  # the same run through autograd and torch rollouts
    "sb3": ("sb3", {}),
}


def section_minatar_sps(args, command: str) -> None:
    """Steps/s of proximo's NumPy CNN path, its torch path and SB3 on MinAtar, the same network and settings."""
    sides = args.sides
    runs = []
    for game in args.games:
        for repeat in range(args.repeats):
            for side in sides:  # A B C A B C: drifts in machine load hit every side alike
                worker, extra = MINATAR_SPS_SIDES[side]
                result = run_worker(worker, env_id=MINATAR_GAMES[game], preset="minatar", seed=1 + repeat,
                                    steps=args.steps, eval_episodes=0, **extra)
                result.pop("curve")
                runs.append(dict(game=game, repeat=repeat, side=side, **result))
                print(f"{game} run {repeat} {side}: {result['sps']:,.0f} steps/s"
                      + (f" ({result['learner']})" if "learner" in result else ""), flush=True)
    rows = []
    for game in args.games:
        row = {"game": game, **{side: _median([r["sps"] for r in runs if r["game"] == game and r["side"] == side])
                                for side in sides}}
        if "sb3" in sides:
            row.update({f"{side}_over_sb3": row[side] / row["sb3"] for side in sides if side != "sb3"})
        if "proximo" in sides and "proximo-torch" in sides:
            row["proximo_over_torch"] = row["proximo"] / row["proximo-torch"]
        rows.append(row)
    ratio_columns = [key for key in rows[0] if "_over_" in key]
    lines = [f"# MinAtar throughput: proximo's NumPy CNN path, its torch path and SB3, `minatar`, {args.steps:,} "
             "steps a run", "", f"`{command}`", "",
             "Preset `minatar` on every side (8 envs x 128 steps, 4 epochs of minibatch 256; MinAtar's network: "
             "16x3x3 conv, ReLU, 128 ReLU units shared by linear policy and value heads; SB3 through a features "
             "extractor of the same layers). `proximo`: learner auto, which takes the NumPy CNN learner and "
             "rollouts through the NumPy conv actor; `proximo-torch`: learner=torch (autograd update, torch "
             f"rollouts). One torch and BLAS thread, a fresh process per run, sides alternating; {args.repeats} runs "
             "a side, median steps/s over training time (setup and the final evaluation excluded).", "",
             "| game | " + " | ".join(f"{side} steps/s" for side in sides) + " | "
             + " | ".join(key.replace("_over_", " / ") for key in ratio_columns) + " |",
             "|---" * (1 + len(sides) + len(ratio_columns)) + "|"]
    for row in rows:
        lines.append(f"| {row['game']} | " + " | ".join(f"{row[side]:,.0f}" for side in sides) + " | "
                     + " | ".join(f"{row[key]:.2f}x" for key in ratio_columns) + " |")
    lines += ["", "Per run (in run order): " + ", ".join(f"{r['game']} {r['side']} {r['sps']:,.0f}" for r in runs), ""]
    write_results(RESULTS / f"atari-minatar-sps{args.tag}", dict(command=command, machine=machine(), steps=args.steps,
                                                                 rows=rows, runs=runs), "\n".join(lines))


def section_atari_sps(args, command: str) -> None:
    runs = []
    for game in args.games:
        for repeat in range(args.repeats):
            for side in ("proximo", "sb3"):
                result = run_worker(side, env_id=ATARI_GAMES[game], preset="paper-atari", seed=1 + repeat,
                                    steps=args.steps, eval_episodes=0)
                result.pop("curve")
                runs.append(dict(game=game, repeat=repeat, side=side, **result))
                print(f"{game} run {repeat} {side}: {result['sps']:,.1f} steps/s", flush=True)
    rows = []
    for game in args.games:
        p = _median([r["sps"] for r in runs if r["game"] == game and r["side"] == "proximo"])
        s = _median([r["sps"] for r in runs if r["game"] == game and r["side"] == "sb3"])
        rows.append(dict(game=game, proximo_sps=p, sb3_sps=s, ratio=p / s))
    lines = [f"# Atari on CPU: proximo vs SB3 CnnPolicy, `paper-atari`, {args.steps:,} steps a run", "",
             f"`{command}`", "",
             "8 envs x 128 steps, 3 epochs of minibatch 256, the paper's network on both sides (Nature conv torso, "
             "shared 512 ReLU, linear heads); frame skip 4 with max-pool, 84x84 grey, stack 4, no-op reset, episodic "
             "life, reward clipping, fire reset, sticky actions off. One torch thread, gymnasium sync vector env "
             f"(SB3: DummyVecEnv); {args.repeats} fresh-process runs a side, alternating; median steps/s over "
             "training time (setup excluded).", "",
             "| game | proximo steps/s | SB3 steps/s | proximo / SB3 |", "|---|---|---|---|"]
    lines += [f"| {r['game']} | {r['proximo_sps']:.1f} | {r['sb3_sps']:.1f} | {r['ratio']:.2f}x |" for r in rows]
    lines += ["", "Per run: " + ", ".join(f"{r['game']} {r['side']} {r['sps']:.1f}" for r in runs), ""]
    write_results(RESULTS / "atari-sps", dict(command=command, machine=machine(), steps=args.steps, rows=rows,
                                              runs=runs), "\n".join(lines))


def section_vecenv(args, command: str) -> None:
    kinds = ["sync", "async"]
    try:
        import envpool  # noqa: F401
        kinds += ["envpool-1", "envpool-2"]
    except ImportError:
        pass
    runs = []
    for repeat in range(args.repeats):
        for kind in kinds:
            result = run_worker("vecenv", kind=kind, steps=args.steps)
            runs.append(dict(kind=kind, repeat=repeat, **result))
            print(f"{kind} run {repeat}: {result['sps']:,.0f} steps/s", flush=True)
    medians = {kind: _median([r["sps"] for r in runs if r["kind"] == kind]) for kind in kinds}
    lines = [f"# Vector envs for Atari: 8 x ALE/Pong-v5, random actions, {args.steps} vector steps", "", f"`{command}`",
             "", "proximo's pipeline (gymnasium AtariPreprocessing + proximo's wrappers) in gymnasium's sync and async "
             "vector envs, against envpool's own Atari pipeline (episodic life, reward clip, no-op 30, sticky off) "
             "with 1 and 2 threads. Fresh process each, alternating, median of "
             f"{args.repeats}. async and envpool-2 use both cores.", "",
             "| vector env | steps/s | vs sync |", "|---|---|---|"]
    lines += [f"| {kind} | {medians[kind]:,.0f} | {medians[kind] / medians['sync']:.2f}x |" for kind in kinds]
    lines += ["", "Per run: " + ", ".join(f"{r['kind']} {r['sps']:,.0f}" for r in runs), ""]
    write_results(RESULTS / "atari-vecenv", dict(command=command, machine=machine(), steps=args.steps,
                                                 medians=medians, runs=runs), "\n".join(lines))


def section_memory(args, command: str) -> None:
    result = run_worker("memory")
    fields = ", ".join(f"{k} {v}" for k, v in result["bytes_by_field"].items())
    lines = ["# Memory of a paper-atari rollout (8 envs x 128 steps, ALE/Pong-v5)", "", f"`{command}`", "",
             f"- observations stored as {result['obs_dtype']} {result['obs_shape']}: "
             f"{result['bytes_per_transition']:,} bytes per stored transition ({fields}); float32 frames would "
             f"take {result['float32_obs_bytes']:,} bytes for the observation alone",
             f"- the whole rollout buffer: {result['buffer_mib']:.1f} MiB",
             f"- process peak RSS: {result['peak_rss_before_mib']:.0f} MiB after setup (torch, 8 envs, policy, "
             f"buffer), {result['peak_rss_after_rollout_mib']:.0f} MiB after one rollout, "
             f"{result['peak_rss_after_update_mib']:.0f} MiB after a second rollout and one update", ""]
    write_results(RESULTS / "atari-memory", dict(command=command, machine=machine(), **result), "\n".join(lines))


def main() -> None:
    """Parse the section and its options, run it, write the results."""
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        print(json.dumps(WORKERS[sys.argv[2]](**json.loads(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="section", required=True)
    minatar = sub.add_parser("minatar")
    minatar.add_argument("--games", nargs="+", default=list(MINATAR_GAMES), choices=list(MINATAR_GAMES))
    minatar.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    minatar.add_argument("--steps", type=int, default=150_000)
    minatar.add_argument("--eval-episodes", type=int, default=5)
    msps = sub.add_parser("minatar-sps")
    msps.add_argument("--games", nargs="+", default=["Breakout"], choices=list(MINATAR_GAMES))
    msps.add_argument("--sides", nargs="+", default=list(MINATAR_SPS_SIDES), choices=list(MINATAR_SPS_SIDES))
    msps.add_argument("--steps", type=int, default=50_000)
    msps.add_argument("--repeats", type=int, default=3)
    msps.add_argument("--tag", default="", help="suffix for the result files (atari-minatar-sps<tag>.json/.md)")
    sps = sub.add_parser("atari-sps")
    sps.add_argument("--games", nargs="+", default=list(ATARI_GAMES), choices=list(ATARI_GAMES))
    sps.add_argument("--steps", type=int, default=3072)
    sps.add_argument("--repeats", type=int, default=3)
    vec = sub.add_parser("vecenv")
    vec.add_argument("--steps", type=int, default=400)
    vec.add_argument("--repeats", type=int, default=3)
    sub.add_parser("memory")
    args = parser.parse_args()
    command = "python benchmarks/atari.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    {"minatar": section_minatar, "minatar-sps": section_minatar_sps, "atari-sps": section_atari_sps,
     "vecenv": section_vecenv, "memory": section_memory}[args.section](args, command)


if __name__ == "__main__":
    main()
