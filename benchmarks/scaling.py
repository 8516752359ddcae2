"""One run over K processes: steps/s and returns at K = 1 and 2, the cost of one gloo all-reduce, a model for large K.

    python benchmarks/scaling.py --steps 100000 --seeds 3   # HalfCheetah-v5, presets paper-mujoco and mujoco

Each training run is `proximo train HalfCheetah-v5 --preset P --nproc K` in a subprocess (torchrun
--standalone for K > 1, gloo on loopback). The all-reduce latency is measured by this script
re-run under torchrun (--latency-worker). Results: benchmarks/results/scaling.{json,md}.
On a 2-core machine two ranks share the two cores with their env stepping, so K = 2 cannot show a
speed-up here; what it measures is the communication cost the model below extrapolates from.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("paper-mujoco", "mujoco")
# float32 elements of one all-reduce, from a single value to a 256x256 actor-critic's gradient and beyond
LATENCY_SIZES = (1, 38, 11_085, 142_605, 1_000_000)
# Assumed interconnects for the model (one direction per link; latency is per message step, software included).
FABRICS = {
    "InfiniBand HDR / NCCL-class": {"latency_s": 5e-6, "bandwidth_Bps": 25e9},
    "10 GbE / gloo over TCP": {"latency_s": 50e-6, "bandwidth_Bps": 1.25e9},
}
MODEL_K = (8, 64, 256)


# measurements ---------------------------------------------------------------------------------------
def latency_worker(out: Path, repeats: int) -> None:
    """Under torchrun: time world.all_reduce_sum_ for each size in LATENCY_SIZES; rank 0 writes JSON."""
    import torch

    from proximo.distributed import init_world
    world = init_world(torch.device("cpu"))
    results = []
    for size in LATENCY_SIZES:
        tensor = torch.zeros(size, dtype=torch.float32)
        for _ in range(20):
            world.all_reduce_sum_(tensor)
        world.barrier()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            world.all_reduce_sum_(tensor)
            times.append(time.perf_counter() - start)
        results.append({"floats": size, "bytes": 4 * size, "median_s": statistics.median(times),
                        "p10_s": sorted(times)[len(times) // 10], "p90_s": sorted(times)[9 * len(times) // 10]})
    if world.is_main:
        out.write_text(json.dumps({"world_size": world.size, "backend": world.backend, "sizes": results}, indent=2))
    world.close()


def measure_latency(nproc: int, repeats: int) -> dict:
    """Run latency_worker on nproc local ranks under torchrun; its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "latency.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   __file__, "--latency-worker", str(out), "--repeats", str(repeats)]
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(out.read_text())


def parameter_count(env_id: str, preset: str) -> dict:
    """Parameters of the preset's policy on env_id and the per-update shape of its work."""
    import gymnasium as gym

    from proximo.config import make_config
    from proximo.train import build_policy
    config = make_config(preset)
    env = gym.make(env_id)
    policy = build_policy(env.observation_space, env.action_space, config)
    obs_dim = env.observation_space.shape[0]
    env.close()
    params = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    # Per-step statistics: observation moments (1 + 2 x obs dim) and return moments (1 + 2), float64.
    moment_floats = (1 + 2 * obs_dim if config.normalize_obs else 0) + (3 if config.normalize_reward else 0)
    return {"parameters": params, "gradient_bytes": 4 * (params + (1 if config.target_kl is not None else 0)),
            "num_envs": config.num_envs, "n_steps": config.n_steps, "batch_size": config.batch_size,
            "n_epochs": config.n_epochs, "moment_bytes": 8 * moment_floats,
            "per_step_all_reduces": config.n_steps if moment_floats else 0}


def train_once(env_id: str, preset: str, nproc: int, steps: int, seed: int, runs: Path) -> dict:
    """One `proximo train --nproc` run; its summary plus per-update timings from updates.jsonl."""
    run_dir = runs / f"{env_id}-{preset}-k{nproc}-s{seed}"
    command = [sys.executable, "-m", "proximo", "train", env_id, "--preset", preset, "--seed", str(seed),
               "--total-steps", str(steps), "--run-dir", str(run_dir), "--quiet", "--no-tensorboard",
               "--eval-episodes", "10", "--nproc", str(nproc)]
    load_before = _load_average()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{preset} K={nproc} failed:\n" + "\n".join(result.stderr.splitlines()[-5:]))
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "updates.jsonl").read_text().splitlines() if line]
    times = [b["time_s"] - a["time_s"] for a, b in zip(rows, rows[1:])]
    record = {"env_id": env_id, "preset": preset, "nproc": nproc, "seed": seed, "steps": summary["global_step"], "sps": summary["sps"],
              "eval_return_mean": summary["eval_return_mean"],
              "train_return_last100_mean": summary["train_return_last100_mean"], "process_wall_s": wall,
              "update_s": statistics.median(times) if times else float("nan"),
              "minibatches_per_update": rows[-1]["minibatches"],
              # The 1-minute load average before and after: other jobs on a shared machine slow K = 2 most.
              "load_average_1min": [load_before, _load_average()]}
    if nproc > 1:
        record["comm_rollout_s"] = statistics.median(r["comm_rollout_s"] for r in rows)
        record["comm_update_s"] = statistics.median(r["comm_update_s"] for r in rows)
    print(f"{env_id} {preset} K={nproc} seed {seed}: {record['sps']:.0f} steps/s, eval {record['eval_return_mean']:.0f}, "
          f"{record['update_s']:.2f} s/update", flush=True)
    return record


def _load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# the model ------------------------------------------------------------------------------------------------
def all_reduce_s(k: int, nbytes: int, latency_s: float, bandwidth_Bps: float) -> float:
    """Time of one all-reduce of nbytes over k ranks: 2 log2(k) latency steps (tree / recursive halving and
    doubling) plus the ring's 2 (k - 1) / k x bytes over each link."""
    return 2 * math.log2(k) * latency_s + 2 * (k - 1) / k * nbytes / bandwidth_Bps


def predict(shape: dict, compute_s: float, k: int, fabric: dict) -> dict:
    """Efficiency at k ranks with the per-rank work of one process (DD-PPO's weak scaling: batch_size = k x the
    one-process minibatch, so each rank still steps n_epochs x rollout / minibatch times per update)."""
    calls = shape["n_epochs"] * shape["num_envs"] * shape["n_steps"] // shape["batch_size"]
    comm = calls * all_reduce_s(k, shape["gradient_bytes"], **fabric)
    comm += shape["per_step_all_reduces"] * all_reduce_s(k, shape["moment_bytes"], **fabric)
    comm += all_reduce_s(k, 8 * (6 + k), **fabric)  # the per-update stop flag, episode stats, checksums
    return {"k": k, "calls_per_update": calls + shape["per_step_all_reduces"] + 1, "comm_s": comm,
            "efficiency": compute_s / (compute_s + comm), "speedup": k * compute_s / (compute_s + comm)}


# report ----------------------------------------------------------------------------------------------------
def aggregate(runs: list[dict]) -> list[dict]:
    """Per (env, preset, K): median speed and seconds per update, mean and std of the returns over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["env_id"], run["preset"], run["nproc"]), []).append(run)
    rows = []
    for (env_id, preset, nproc), group in groups.items():
        row = {"env_id": env_id, "preset": preset, "nproc": nproc, "seeds": [r["seed"] for r in group],
               "sps_median": statistics.median(r["sps"] for r in group),
               "update_s_median": statistics.median(r["update_s"] for r in group),
               "minibatches_per_update": group[0]["minibatches_per_update"]}
        for key in ("eval_return_mean", "train_return_last100_mean"):
            values = [r[key] for r in group if r[key] is not None]
            row[key] = statistics.mean(values) if values else None
            row[key.replace("_mean", "_std")] = statistics.pstdev(values) if values else None
        if nproc > 1:
            for key in ("comm_rollout_s", "comm_update_s"):
                row[key] = statistics.median(r[key] for r in group)
        rows.append(row)
    return rows


def _pm(mean, std) -> str:
    return "-" if mean is None else f"{mean:.0f} +- {std:.0f}"


def markdown(data: dict, args: argparse.Namespace) -> str:
    """The results as markdown tables."""
    seeds = ", ".join(map(str, data["seeds"]))
    lines = [f"# One run over K processes ({args.steps:,} steps, seeds {seeds})", "",
             f"Command: `python benchmarks/scaling.py --steps {args.steps} --seeds {args.seeds} --envs {args.envs}`  ",
             f"Machine: {data['machine']['cores']} cores, {data['machine']['cpu']}, torch {data['machine']['torch']}; "
             f"load average at the start {data['load_average']} (other jobs shared the machine).", "",
             "## Training, K = 1 and 2 processes here (gloo on loopback)", "",
             "steps/s and s / update: median over seeds; returns: mean +- std over seeds (eval: deterministic, 10 "
             "episodes). The all-reduce seconds include the wait for the slower rank.", "",
             "| env | preset | K | steps/s | eval return | last-100 train return | s / update | minibatches / update "
             "| all-reduce s / update: rollout, update |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["summary"]:
        comm = f"{r['comm_rollout_s']:.2f}, {r['comm_update_s']:.2f}" if r["nproc"] > 1 else "-"
        lines.append(f"| {r['env_id']} | {r['preset']} | {r['nproc']} | {r['sps_median']:,.0f} | "
                     f"{_pm(r['eval_return_mean'], r['eval_return_std'])} | "
                     f"{_pm(r['train_return_last100_mean'], r['train_return_last100_std'])} | "
                     f"{r['update_s_median']:.2f} | {r['minibatches_per_update']:.0f} | {comm} |")
    lat = data["latency"]
    lines += ["", f"## One all-reduce between {lat['world_size']} local processes ({lat['backend']})", "",
              "| float32 elements | bytes | median | p10 | p90 |", "|---|---|---|---|---|"]
    for s in lat["sizes"]:
        lines.append(f"| {s['floats']:,} | {s['bytes']:,} | {s['median_s'] * 1e3:.2f} ms | {s['p10_s'] * 1e3:.2f} ms "
                     f"| {s['p90_s'] * 1e3:.2f} ms |")
    lines += ["", "## What crosses per update, per rank", "",
              "| env | preset | parameters | gradient all-reduce | calls / update | per-step statistics all-reduce | "
              "calls / update | per-update sync |", "|---|---|---|---|---|---|---|---|"]
    for key, shape in data["shapes"].items():
        env_id, preset = key.split(" ")
        calls = shape["n_epochs"] * shape["num_envs"] * shape["n_steps"] // shape["batch_size"]
        lines.append(f"| {env_id} | {preset} | {shape['parameters']:,} | {shape['gradient_bytes']:,} B | {calls} | "
                     f"{shape['moment_bytes']} B | {shape['per_step_all_reduces']} | 8 x (6 + K) B, 1 |")
    lines += ["", "## Predicted efficiency at large K (weak scaling: per-rank work as in one process)", "",
              "compute per update = the median K = 1 seconds per update here; communication = calls x "
              "(2 log2 K x latency + 2 (K-1)/K x bytes / bandwidth).", "",
              "| env | preset | fabric (latency, bandwidth) | K | all-reduce s / update | efficiency | speed-up |",
              "|---|---|---|---|---|---|---|"]
    for p in data["predictions"]:
        fabric = FABRICS[p["fabric"]]
        lines.append(f"| {p['env_id']} | {p['preset']} | {p['fabric']} ({fabric['latency_s'] * 1e6:.0f} us, "
                     f"{fabric['bandwidth_Bps'] / 1e9:.2f} GB/s) | {p['k']} | {p['comm_s']:.3f} | "
                     f"{p['efficiency']:.0%} | {p['speedup']:.0f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse, measure, model, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N for every env, preset and K")
    parser.add_argument("--envs", default="HalfCheetah-v5", help="comma-separated env ids")
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--repeats", type=int, default=300, help="timed all-reduces per size")
    parser.add_argument("--runs", type=Path, default=None, help="where the run directories go (default: a temp dir)")
    parser.add_argument("--latency-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.latency_worker is not None:
        latency_worker(args.latency_worker, args.repeats)
        return
    load = Path("/proc/loadavg").read_text().split()[:3]
    latency = measure_latency(2, args.repeats)
    print("all-reduce medians:", {s["floats"]: f"{s['median_s'] * 1e3:.2f} ms" for s in latency["sizes"]}, flush=True)
    envs, seeds = args.envs.split(","), list(range(1, args.seeds + 1))
    shapes = {f"{env_id} {preset}": parameter_count(env_id, preset) for env_id in envs for preset in PRESETS}
    runs_root = args.runs or Path(tempfile.mkdtemp(prefix="proximo-scaling-"))
    # Seeds outermost, so a slow spell on a shared machine spreads over every configuration.
    runs = [train_once(env_id, preset, int(k), args.steps, seed, runs_root)
            for seed in seeds for env_id in envs for preset in PRESETS for k in args.nprocs.split(",")]
    summary = aggregate(runs)
    predictions = []
    for row in summary:
        if row["nproc"] != 1:
            continue
        for fabric_name, fabric in FABRICS.items():
            for k in MODEL_K:
                predictions.append({"env_id": row["env_id"], "preset": row["preset"], "fabric": fabric_name,
                                    **predict(shapes[f"{row['env_id']} {row['preset']}"], row["update_s_median"], k,
                                              fabric)})
    data = {"machine": machine(), "load_average": " ".join(load), "steps": args.steps, "seeds": seeds,
            "latency": latency, "shapes": shapes, "runs": runs, "summary": summary, "fabrics": FABRICS,
            "predictions": predictions}
    write_results(ROOT / "benchmarks" / "results" / "scaling", data, markdown(data, args))
    print(markdown(data, args))


if __name__ == "__main__":
    main()
