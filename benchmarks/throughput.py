"""Training throughput of proximo against Stable-Baselines3, side by side in one run.

Each measurement runs in its own fresh interpreter (a subprocess of this script), one at a time,
alternating proximo / SB3 / raw env so that drifts in machine load hit every side alike.

    python benchmarks/throughput.py                      # both cases, 3 repeats, 1 thread
    python benchmarks/throughput.py --cases cartpole --repeats 5 --threads 2

steps/s = env steps trained / training wall time (setup and the final evaluation excluded; the
whole-process time is recorded as well). The raw-env side steps the same vector env with random
actions and no policy at all: the ceiling a trainer can approach. Results go to
benchmarks/results/throughput.json and throughput.md (throughput-t2.* for --threads 2; or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_model  # noqa: E402

# Each case: the env, the proximo preset, and the SB3 keyword arguments that mean the same thing.
CASES = {
    "cartpole": dict(env_id="CartPole-v1", preset="cartpole", steps=100_000, envs=8,
                     sb3=dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                              ent_coef=0.0, learning_rate=("linear", 1e-3), clip_range=("linear", 0.2))),
    "halfcheetah": dict(env_id="HalfCheetah-v5", preset="paper-mujoco", steps=200_000, envs=1,
                        sb3=dict(n_steps=2048, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99,
                                 gae_lambda=0.95, clip_range=0.2, ent_coef=0.0)),
}
SIDES = ("proximo", "sb3", "raw")
EVAL_SEED_OFFSET = 10_000  # both sides evaluate on the same episode seeds: seed + offset + episode


# ---------------------------------------------------------------------------------------------
# workers: each runs in a fresh interpreter and prints one JSON line
# ---------------------------------------------------------------------------------------------
def _set_threads(threads: int) -> None:
    # The same cap for torch and for NumPy's BLAS on every side (proximo's NumPy paths use BLAS).
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")


def worker_proximo(case: dict, seed: int, steps: int, envs: int, threads: int, backend: str) -> dict:
    """Train proximo with the case's preset; returns timing and final deterministic eval."""
    _set_threads(threads)
    from proximo.config import make_config
    from proximo.train import Trainer

    config = make_config(case["preset"], seed=seed, total_steps=steps, num_envs=envs,
                         torch_threads=threads, env_backend=backend, eval_episodes=10)
    trainer = Trainer(case["env_id"], config, run_dir=None, verbose=False, tensorboard=False)
    summary = trainer.train(steps)
    return dict(steps=summary["global_step"], train_s=summary["wall_time_s"],
                eval_return=summary["eval_return_mean"], eval_std=summary["eval_return_std"],
                train_return_last100=summary["train_return_last100_mean"])


def _sb3_schedule(value):
    if isinstance(value, tuple):
        kind, start = value
        assert kind == "linear"
        return lambda progress_remaining: progress_remaining * start
    return value


def worker_sb3(case: dict, seed: int, steps: int, envs: int, threads: int, backend: str) -> dict:
    """Train SB3's PPO with the same hyperparameters and network; returns timing and eval."""
    _set_threads(threads)
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    kwargs = {key: _sb3_schedule(value) for key, value in case["sb3"].items()}
    venv = make_vec_env(case["env_id"], n_envs=envs, seed=seed)
    policy_kwargs = dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh, ortho_init=True)
    model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs, **kwargs)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    train_s = time.perf_counter() - start
    returns = _evaluate(lambda obs: model.predict(obs, deterministic=True)[0], case["env_id"], seed)
    ep_info = [info["r"] for info in model.ep_info_buffer]
    return dict(steps=int(model.num_timesteps), train_s=train_s, eval_return=float(np.mean(returns)),
                eval_std=float(np.std(returns)),
                train_return_last100=float(np.mean(ep_info)) if ep_info else float("nan"))


def _evaluate(act, env_id: str, seed: int, episodes: int = 10) -> list[float]:
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + EVAL_SEED_OFFSET + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def worker_raw(case: dict, seed: int, steps: int, envs: int, threads: int, backend: str) -> dict:
    """Step proximo's vector env (same backend and count) with random actions, no learning."""
    _set_threads(threads)
    import numpy as np

    from proximo.envs.make import make_vector_env

    venv = make_vector_env(case["env_id"], envs, backend)
    venv.reset(seed=seed)
    space = venv.action_space
    rng = np.random.default_rng(seed)
    if hasattr(space, "nvec"):
        sample = lambda: rng.integers(0, space.nvec)  # noqa: E731
    else:
        sample = lambda: rng.uniform(space.low, space.high).astype(space.dtype)  # noqa: E731
    iterations = -(-steps // envs)
    start = time.perf_counter()
    for _ in range(iterations):
        venv.step(sample())
    train_s = time.perf_counter() - start
    venv.close()
    return dict(steps=iterations * envs, train_s=train_s)


WORKERS = {"proximo": worker_proximo, "sb3": worker_sb3, "raw": worker_raw}


def run_worker(args: argparse.Namespace) -> None:
    """Entry point of one measurement subprocess: prints a single JSON line on stdout."""
    case = CASES[args.case]
    result = WORKERS[args.worker](case, args.seed, args.steps, args.envs, args.threads, args.backend)
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def measure(side: str, case_name: str, seed: int, steps: int, envs: int, threads: int, backend: str) -> dict:
    """Run one side in a fresh interpreter; returns its result plus whole-process seconds."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--case", case_name,
               "--seed", str(seed), "--steps", str(steps), "--envs", str(envs), "--threads", str(threads),
               "--backend", backend]
    env = dict(os.environ, PYTHONHASHSEED="0")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE.parent)
    process_s = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {case_name} seed {seed} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(side=side, seed=seed, process_s=process_s, sps=result["steps"] / result["train_s"])
    return result


def machine_info(threads: int) -> dict:
    """Cores, CPU model, load and library versions of this machine."""
    import gymnasium
    import stable_baselines3
    import torch

    return dict(cpu_model=cpu_model(), logical_cores=os.cpu_count(), python=platform.python_version(),
                torch=torch.__version__, gymnasium=gymnasium.__version__, sb3=stable_baselines3.__version__,
                torch_threads=threads, load_avg_start=list(os.getloadavg()),
                thread_env={k: v for k, v in os.environ.items() if k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                                        "MKL_NUM_THREADS", "KMP_BLOCKTIME")},
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


def summarize(case_name: str, runs: list[dict]) -> dict:
    """Medians per side and the ratios proximo/SB3 and proximo/raw."""
    out: dict = {"case": case_name}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        if not mine:
            continue
        out[side] = dict(median_sps=statistics.median(r["sps"] for r in mine),
                         sps=[round(r["sps"], 1) for r in mine],
                         median_process_s=statistics.median(r["process_s"] for r in mine))
        if side != "raw":
            evals = [r["eval_return"] for r in mine]
            out[side].update(eval_returns=[round(e, 1) for e in evals], eval_mean=statistics.fmean(evals),
                             eval_std=statistics.pstdev(evals))
    if "proximo" in out and "sb3" in out:
        out["proximo_over_sb3"] = out["proximo"]["median_sps"] / out["sb3"]["median_sps"]
    if "proximo" in out and "raw" in out:
        out["proximo_over_raw"] = out["proximo"]["median_sps"] / out["raw"]["median_sps"]
    return out


def markdown(report: dict) -> str:
    """The results as a markdown table with the machine and the command."""
    m = report["machine"]
    lines = [
        "# proximo vs Stable-Baselines3: training throughput", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores, load average at start "
        f"{m['load_avg_start'][0]:.2f} / end {report['load_avg_end'][0]:.2f}; Python {m['python']}, "
        f"torch {m['torch']}, gymnasium {m['gymnasium']}, SB3 {m['sb3']}; torch threads {m['torch_threads']}"
        f"{''.join(f', {k}={v}' for k, v in m.get('thread_env', {}).items())}; "
        f"proximo env backend `{report['backend']}`; {m['date']}.", "",
        "steps/s = env steps / training wall time (setup and final evaluation excluded), median of "
        f"{report['repeats']} runs per side, run alternately in fresh processes. Eval = deterministic "
        "return over 10 episodes after training, mean +- std over runs.", "",
        "| case | proximo steps/s | SB3 steps/s | raw env steps/s | proximo / SB3 | proximo / raw | "
        "proximo eval | SB3 eval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report["summary"]:
        def sps(side):
            return f"{s[side]['median_sps']:,.0f}" if side in s else "-"

        def ev(side):
            return f"{s[side]['eval_mean']:.1f} +- {s[side]['eval_std']:.1f}" if side in s else "-"
        ratio_sb3 = f"{s['proximo_over_sb3']:.2f}x" if "proximo_over_sb3" in s else "-"
        ratio_raw = f"{s['proximo_over_raw']:.2f}" if "proximo_over_raw" in s else "-"
        lines.append(f"| {s['case']} | {sps('proximo')} | {sps('sb3')} | {sps('raw')} | {ratio_sb3} | "
                     f"{ratio_raw} | {ev('proximo')} | {ev('sb3')} |")
    lines += ["", "Per-run steps/s (in run order):", ""]
    for s in report["summary"]:
        for side in SIDES:
            if side in s:
                extra = f"; eval {s[side]['eval_returns']}" if "eval_returns" in s[side] else ""
                lines.append(f"- {s['case']} {side}: {s[side]['sps']}{extra}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse flags and either run one worker or drive the whole benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="cartpole,halfcheetah", help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--seeds", default="1,2,3", help="comma list; run i uses seeds[i %% len(seeds)]")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side and case (at least 1)")
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (0: the case's default)")
    parser.add_argument("--envs", type=int, default=0, help="parallel envs (0: the case's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on every side")
    parser.add_argument("--backend", default="sync", help="proximo env backend (sync or async)")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma list of proximo, sb3, raw")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for throughput.json/.md")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    sides = [s for s in args.sides.split(",") if s]
    if unknown or any(s not in SIDES for s in sides) or args.repeats < 1 or args.threads < 1:
        parser.error(f"cases must be among {list(CASES)}, sides among {list(SIDES)}, repeats and threads >= 1")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    report = dict(command="python " + " ".join([Path(sys.argv[0]).as_posix()] + (argv or sys.argv[1:])),
                  machine=machine_info(args.threads), repeats=args.repeats, backend=args.backend,
                  runs=[], summary=[])
    for case_name in cases:
        case = CASES[case_name]
        steps, envs = args.steps or case["steps"], args.envs or case["envs"]
        runs = []
        for i in range(args.repeats):
            seed = seeds[i % len(seeds)]
            for side in sides:
                result = measure(side, case_name, seed, steps, envs, args.threads, args.backend)
                result.update(case=case_name, envs=envs)
                runs.append(result)
                evaluation = f" eval {result['eval_return']:.1f}" if "eval_return" in result else ""
                print(f"{case_name:12s} {side:8s} seed {seed}: {result['sps']:9,.0f} steps/s "
                      f"({result['steps']:,} steps in {result['train_s']:.1f} s){evaluation}", flush=True)
        report["runs"] += runs
        summary = summarize(case_name, runs)
        report["summary"].append(summary)
        ratio = summary.get("proximo_over_sb3")
        if ratio:
            print(f"{case_name}: proximo / SB3 = {ratio:.2f}x, proximo / raw = "
                  f"{summary.get('proximo_over_raw', float('nan')):.2f}", flush=True)
    report["load_avg_end"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "throughput" + (f"-t{args.threads}" if args.threads != 1 else "") + (f"-{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
