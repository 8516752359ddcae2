"""Populations side by side: K agents as one proximo population vs K solo proximo runs vs K SB3 runs vs the
raw envs alone, on the same machine in one sitting.

    python benchmarks/populations.py --cases cartpole,halfcheetah --k 1,4,16,64 --out benchmarks/results/populations

Every cell (case, K, side) runs in a fresh process and is kept in OUT.json as it finishes, so an interrupted
benchmark resumes where it stopped (--fresh starts over). Figures are agent-steps per core-second: a
population runs in one process on one core; K solo runs (proximo or SB3) run two at a time on the two
cores, and their core-seconds are the sum of their training times. The raw-env side steps the same K x N
envs with random actions in one process: the limit a population's rollouts cannot beat. Each agent's
returns are reported beside the solo run of the same seed (a population's agent k is bitwise the solo run
of seed k: tests/test_population.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402
from throughput import CASES, worker_proximo, worker_sb3  # noqa: E402

SIDES = ("population", "solo", "sb3", "raw")
DEFAULT_STEPS = {"cartpole": 20_480, "halfcheetah": 20_480}


def _set_threads() -> None:
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")


def child_population(case: dict, k: int, steps: int, device: str) -> dict:
    """One population of seeds 1..k: training seconds and each agent's returns."""
    _set_threads()
    from proximo.config import make_config
    from proximo.population.trainer import Population, population_configs

    config = make_config(case["preset"], case["env_id"], total_steps=steps, num_envs=case["envs"], eval_episodes=10,
                         device=device)
    population = Population(case["env_id"], population_configs(config, list(range(1, k + 1))), None, verbose=False,
                            tensorboard=False)
    summaries = population.train(steps)
    train_s = population.members[0].wall_time_s
    return dict(train_s=train_s, core_s=train_s, agent_steps=population.global_step * k,
                device=population.device_choice,
                eval_returns=[s["eval_return_mean"] for s in summaries],
                last100=[s["train_return_last100_mean"] for s in summaries])


def child_solo(case: dict, seed: int, steps: int, side: str) -> dict:
    """One solo run (proximo or SB3) of seed `seed`."""
    worker = worker_proximo if side == "solo" else worker_sb3
    return worker(case, seed, steps, case["envs"], 1, "sync")


def child_raw(case: dict, k: int, steps: int, vectorized: bool) -> dict:
    """The K x N envs stepped with random actions in one process (gymnasium's sync vector env, or for
    CartPole its NumPy-vectorized CartPoleVectorEnv, the fastest it offers)."""
    _set_threads()
    import gymnasium as gym
    import numpy as np

    from proximo.envs.make import make_vector_env

    n = k * case["envs"]
    if vectorized:
        venv = gym.make_vec(case["env_id"], num_envs=n, vectorization_mode="vector_entry_point")
    else:
        venv = make_vector_env(case["env_id"], n, "sync")
    venv.reset(seed=0)
    space = venv.action_space
    rng = np.random.default_rng(0)
    sample = ((lambda: rng.integers(0, space.nvec)) if hasattr(space, "nvec")
              else (lambda: rng.uniform(space.low, space.high).astype(space.dtype)))
    iterations = -(-steps * k // n)
    start = time.perf_counter()
    for _ in range(iterations):
        venv.step(sample())
    seconds = time.perf_counter() - start
    venv.close()
    return dict(train_s=seconds, core_s=seconds, agent_steps=iterations * n)


def run_child(args: list[str], timeout: float) -> dict:
    """Run this script as a child with args; its last stdout line is the JSON result."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(side: str, case_name: str, k: int, steps: int, device: str, timeout: float) -> dict:
    """One cell: the side's agent-steps per core-second for K agents of the case."""
    if side == "population":
        return run_child(["population", case_name, str(k), str(steps), device], timeout)
    if side == "raw":
        result = run_child(["raw", case_name, str(k), str(steps), "0"], timeout)
        if case_name == "cartpole":
            result["vectorized"] = run_child(["raw", case_name, str(k), str(steps), "1"], timeout)
        return result
    # K solo runs, two at a time on the two cores
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda seed: run_child([side, case_name, str(seed), str(steps)], timeout),
                             range(1, k + 1)))
    wall = time.perf_counter() - started
    return dict(train_s=wall, core_s=sum(r["train_s"] for r in runs), agent_steps=sum(r["steps"] for r in runs),
                eval_returns=[r["eval_return"] for r in runs], last100=[r["train_return_last100"] for r in runs])


def arithmetic_limit(case_name: str) -> dict:
    """The update's multiply-adds per agent-step (fwd + bwd of both networks over n_epochs, and the rollout's
    forward) and the agent-steps per second the measured single-core matmul rate allows for them alone."""
    import numpy as np

    from proximo.config import make_config

    case = CASES[case_name]
    config = make_config(case["preset"], case["env_id"])
    import gymnasium as gym

    env = gym.make(case["env_id"])
    obs = int(np.prod(env.observation_space.shape))
    act = int(env.action_space.n) if hasattr(env.action_space, "n") else int(np.prod(env.action_space.shape))
    env.close()
    widths = [obs, *config.net_arch]
    per_net = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    forward = 2 * per_net + config.net_arch[-1] * (act + 1)  # actor and critic, heads
    macs = forward * (1 + 3 * config.n_epochs)  # the rollout's forward; fwd + 2x for bwd per epoch
    a = np.random.default_rng(0).standard_normal((config.batch_size, 64)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    reps = 20_000
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    rate = reps * config.batch_size * 64 * 64 / (time.perf_counter() - start)  # MAC/s at the minibatch's shape
    return dict(macs_per_agent_step=macs, mac_per_s=rate, agent_steps_per_s=rate / macs)


def markdown(data: dict) -> str:
    """The tables of OUT.json."""
    m = data["machine"]
    lines = ["# Populations: K agents as one batch, side by side", "",
             f"Command: `{data['command']}`", "",
             f"Machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']}, proximo {m['proximo_commit']}. "
             "Agent-steps per core-second: a population runs in one process on one core; K solo runs (proximo or "
             "SB3, the same hyperparameters) run two at a time, their core-seconds summed. Raw envs: the K x N "
             "envs stepped with random actions in one process (the rollout's limit).", ""]
    for case_name, cells in data["cases"].items():
        case = CASES[case_name]
        limit = data.get("limits", {}).get(case_name, {})
        lines += [f"## {case['env_id']}, preset `{case['preset']}` ({case['envs']} env(s) per agent, "
                  f"{data['steps'][case_name]:,} steps per agent)", "",
                  "| K | population | K solo proximo | K SB3 | raw envs | population / SB3 | population / raw |",
                  "|---|---|---|---|---|---|---|"]
        for k, sides in sorted(cells.items(), key=lambda item: int(item[0])):
            def rate(side: str) -> float | None:
                cell = sides.get(side)
                return None if cell is None else cell["agent_steps"] / cell["core_s"]
            pop, solo, sb3, raw = (rate(s) for s in SIDES)
            fmt = lambda value: "-" if value is None else f"{value:,.0f}"  # noqa: E731
            ratio = lambda a, b: "-" if a is None or b is None else f"{a / b:.2f}x"  # noqa: E731
            raw_text = fmt(raw)
            vec = sides.get("raw", {}).get("vectorized")
            if vec:
                raw_text += f" (vectorized {vec['agent_steps'] / vec['core_s']:,.0f})"
            lines.append(f"| {k} | {fmt(pop)} | {fmt(solo)} | {fmt(sb3)} | {raw_text} | {ratio(pop, sb3)} | "
                         f"{ratio(pop, raw)} |")
        if limit:
            lines += ["", f"Arithmetic limit: {limit['macs_per_agent_step']:,} multiply-adds per agent-step (both "
                      f"networks' forward in the rollout, forward and backward over {CASES[case_name]['preset']}'s "
                      f"epochs) at the measured {limit['mac_per_s'] / 1e9:.1f} GMAC/s of one core = "
                      f"{limit['agent_steps_per_s']:,.0f} agent-steps/s."]
        returns = []
        for k, sides in sorted(cells.items(), key=lambda item: int(item[0])):
            if "population" in sides and "solo" in sides:
                same = sides["population"]["eval_returns"] == sides["solo"]["eval_returns"]
                import numpy as np
                p, s = np.array(sides["population"]["eval_returns"]), np.array(sides["solo"]["eval_returns"])
                returns.append(f"| {k} | {p.mean():.1f} +- {p.std():.1f} | {s.mean():.1f} +- {s.std():.1f} | "
                               f"{'identical' if same else 'differ'} |")
        if returns:
            lines += ["", "Eval returns (10 episodes each, seeds 1..K) of the population's agents and of the solo runs:",
                      "", "| K | population | solo | per seed |", "|---|---|---|---|", *returns]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure the missing cells, write OUT.json and OUT.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="cartpole,halfcheetah")
    parser.add_argument("--k", default="1,4,16,64", help="population sizes")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--steps", type=int, help="steps per agent (default: the case's)")
    parser.add_argument("--device", default="cpu", help="the population's device (cuda on a GPU machine)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per child process")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/populations"))
    parser.add_argument("--fresh", action="store_true", help="forget the cells measured before")
    args = parser.parse_args(argv)
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.is_file() and not args.fresh else {}
    data.update(command="python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
                machine=machine())
    data.setdefault("cases", {})
    data.setdefault("steps", {})
    data.setdefault("limits", {})
    for case_name in args.cases.split(","):
        steps = args.steps or DEFAULT_STEPS[case_name]
        data["steps"][case_name] = steps
        data["limits"].setdefault(case_name, arithmetic_limit(case_name))
        for k in (int(x) for x in args.k.split(",")):
            for side in args.sides.split(","):
                cell = data["cases"].setdefault(case_name, {}).setdefault(str(k), {})
                if side in cell:
                    continue
                print(f"measuring {case_name} K={k} {side} ...", file=sys.stderr, flush=True)
                cell[side] = measure(side, case_name, k, steps, args.device, args.timeout)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(data, indent=2) + "\n")
                args.out.with_suffix(".md").write_text(markdown(data))
    args.out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, case_name, *rest = sys.argv[2:]
        case = CASES[case_name]
        if kind == "population":
            result = child_population(case, int(rest[0]), int(rest[1]), rest[2])
        elif kind == "raw":
            result = child_raw(case, int(rest[0]), int(rest[1]), rest[2] == "1")
        else:
            result = child_solo(case, int(rest[0]), int(rest[1]), kind)
        print(json.dumps(result))
        sys.exit(0)
    sys.exit(main())
