"""What periodic checkpoints cost a CartPole run: whole runs with and without them, and one save against one update.

    python benchmarks/checkpoint_cost.py                  # 3 runs per side, 100,000 steps, save every 2048
    python benchmarks/checkpoint_cost.py --repeats 5 --save-every 1024

Part 1 runs `proximo train CartPole-v1 --preset cartpole --total-steps 100000` in a fresh interpreter per run,
with `--save-every 2048` (A) and `--save-every 0` (B, only the final checkpoint), alternating A B A B so that
drifts in machine load hit both sides alike; it reports the median training wall time (summary.json's
wall_time_s: the training loop, without start-up and the final evaluation) and steps/s.
Part 2 trains once in this process with a Trainer, timing every save_checkpoint() call and the updates around
them, then splits 50 more saves into their parts (gathering the state, JSON, safetensors, fsync, pruning).
Results go to benchmarks/results/checkpoint_cost.json and .md (or --out).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from common import machine, timed, write_results  # noqa: E402


def train_command(run_dir: Path, steps: int, save_every: int) -> list[str]:
    """The `proximo train` command line of one measured run."""
    return ["proximo", "train", "CartPole-v1", "--preset", "cartpole", "--total-steps", str(steps),
            "--save-every", str(save_every), "--run-dir", str(run_dir), "--quiet", "--no-tensorboard"]


def one_run(steps: int, save_every: int, scratch: Path) -> dict:
    """One fresh `proximo train` process; its summary.json figures and the whole-process time."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"save{save_every}-", dir=scratch))
    command = train_command(run_dir, steps, save_every)
    start, cpu_before = time.perf_counter(), _children_cpu_s()
    result = subprocess.run([sys.executable, "-m", "proximo.cli", *command[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    process_s, process_cpu_s = time.perf_counter() - start, _children_cpu_s() - cpu_before
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoints = len(list((run_dir / "checkpoints").iterdir()))
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"save_every": save_every, "wall_time_s": summary["wall_time_s"], "sps": summary["sps"],
            "updates": summary["updates"], "process_s": process_s, "process_cpu_s": process_cpu_s,
            "checkpoints_left": checkpoints}


def _children_cpu_s() -> float:
    """User + system CPU seconds of finished child processes (less swayed by other jobs than wall time)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def whole_runs(steps: int, save_every: int, repeats: int, scratch: Path) -> dict:
    """A B A B ... runs; the per-run rows and the medians of each side."""
    rows = []
    for index in range(repeats):
        for side in (save_every, 0):
            row = one_run(steps, side, scratch)
            print(f"run {index + 1}/{repeats} save_every={side}: train {row['wall_time_s']:.2f} s, "
                  f"{row['sps']:,.0f} steps/s", flush=True)
            rows.append(row)
    sides = {}
    for side in (save_every, 0):
        mine = [row for row in rows if row["save_every"] == side]
        sides[str(side)] = {"median_wall_time_s": statistics.median(r["wall_time_s"] for r in mine),
                            "median_sps": statistics.median(r["sps"] for r in mine),
                            "median_process_s": statistics.median(r["process_s"] for r in mine),
                            "median_process_cpu_s": statistics.median(r["process_cpu_s"] for r in mine)}
    with_saves, without = sides[str(save_every)], sides["0"]
    overhead = with_saves["median_wall_time_s"] / without["median_wall_time_s"] - 1
    return {"runs": rows, "sides": sides, "overhead_fraction": overhead}


def in_process(steps: int, save_every: int, scratch: Path, extra_saves: int = 50) -> dict:
    """Mean save_checkpoint() time against the mean update, timed inside one Trainer's run, plus a split of a save."""
    import proximo.checkpoint as checkpoint
    from proximo.config import make_config
    from proximo.train import Trainer

    run_dir = Path(tempfile.mkdtemp(prefix="inproc-", dir=scratch))
    trainer = Trainer("CartPole-v1", make_config("cartpole", total_steps=steps, save_every=save_every), run_dir,
                      verbose=False, tensorboard=False)
    durations: list[float] = []
    real_save = trainer.save_checkpoint

    def save_and_time():
        start = time.perf_counter()
        try:
            return real_save()
        finally:
            durations.append(time.perf_counter() - start)

    trainer.save_checkpoint = save_and_time
    trainer.train(steps)
    loop = durations[:-1]  # the last save is _finish's, outside the timed loop
    loop_saves, mean_save = len(loop), statistics.mean(durations)
    update_s = (trainer.wall_time_s - sum(loop)) / trainer.update_index

    # 50 more saves with each part timed (the state is the end-of-run state; the step number moves on so that
    # every save is a new folder and pruning runs, as in training)
    parts: dict[str, float] = collections.defaultdict(float)
    originals = {"training_state": trainer.training_state, "json": checkpoint.json.dumps,
                 "safetensors": checkpoint.save_file, "fsync": os.fsync, "rmtree": shutil.rmtree}
    trainer.training_state = timed(parts, "gather the state (training_state)", originals["training_state"])
    checkpoint.json.dumps = timed(parts, "JSON encode (state.json)", originals["json"])
    checkpoint.save_file = timed(parts, "safetensors serialize + write", originals["safetensors"])
    os.fsync = timed(parts, "fsync (2 files, 3 folders)", originals["fsync"])
    shutil.rmtree = timed(parts, "prune the oldest checkpoint (rmtree)", originals["rmtree"])
    try:
        start = time.perf_counter()
        for _ in range(extra_saves):
            trainer.global_step += trainer.config.rollout_size
            trainer.save_checkpoint()
        total = time.perf_counter() - start
    finally:
        trainer.training_state = originals["training_state"]
        checkpoint.json.dumps = originals["json"]
        checkpoint.save_file = originals["safetensors"]
        os.fsync = originals["fsync"]
        shutil.rmtree = originals["rmtree"]
    split = {label: seconds / extra_saves * 1e3 for label, seconds in sorted(parts.items(), key=lambda kv: -kv[1])}
    split["other (mkdtemp, renames, listing)"] = total / extra_saves * 1e3 - sum(split.values())
    newest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    sizes = {path.name: path.stat().st_size for path in newest.iterdir()}
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"updates": trainer.update_index, "saves_in_loop": loop_saves, "mean_save_ms": mean_save * 1e3,
            "median_save_ms": statistics.median(durations) * 1e3, "max_save_ms": max(durations) * 1e3,
            "mean_update_ms": update_s * 1e3, "save_per_update": mean_save / update_s,
            "expected_overhead_fraction": sum(loop) / (update_s * trainer.update_index),
            "split_of_one_save_ms": split, "mean_save_ms_split_phase": total / extra_saves * 1e3,
            "checkpoint_file_bytes": sizes}


def markdown(data: dict) -> str:
    """The results page."""
    whole, inproc, args = data["whole_runs"], data["in_process"], data["settings"]
    a, b = whole["sides"][str(args["save_every"])], whole["sides"]["0"]
    lines = [
        "# Checkpoint cost (CartPole-v1, cartpole preset)", "",
        f"Machine: {data['machine']['cores']} cores, {data['machine']['cpu']}, torch {data['machine']['torch']}, "
        f"proximo {data['machine']['proximo_commit']}. Command: `{data['command']}`. 1-minute load average "
        f"{data['load_average_1min']['before']:.2f} before, {data['load_average_1min']['after']:.2f} after.", "",
        f"## Whole runs ({args['repeats']} per side, alternating, fresh process each)", "",
        "| side | median train wall time (s) | median steps/s | median process wall (s) | median process CPU (s) |",
        "|---|---|---|---|---|",
        *[f"| {name}: `{' '.join(data['train_commands'][name])}` | {side['median_wall_time_s']:.2f} | "
          f"{side['median_sps']:,.0f} | {side['median_process_s']:.2f} | {side['median_process_cpu_s']:.2f} |"
          for name, side in (("A", a), ("B", b))], "",
        "Train wall time per run (s), in the order run: " + "; ".join(
            f"{'A' if row['save_every'] else 'B'} {row['wall_time_s']:.2f}" for row in whole["runs"]) + ".", "",
        f"Periodic checkpoints cost {whole['overhead_fraction'] * 100:+.1f}% of training wall time "
        f"(median A / median B - 1; each run's figures are in checkpoint_cost.json).", "",
        "## One save against one update (in process, one Trainer)", "",
        f"Over one {args['steps']:,}-step run with save_every {args['save_every']}: {inproc['saves_in_loop']} saves "
        f"in the loop, {inproc['updates']} updates.", "",
        "| | mean (ms) |", "|---|---|",
        f"| one save_checkpoint() | {inproc['mean_save_ms']:.2f} (median {inproc['median_save_ms']:.2f}, "
        f"max {inproc['max_save_ms']:.2f}) |",
        f"| one update (collect 256 steps + 20 epochs + logging) | {inproc['mean_update_ms']:.2f} |",
        f"| save / update | {inproc['save_per_update']:.3f} |", "",
        f"Summed, the {inproc['saves_in_loop']} saves in this run's loop took "
        f"{inproc['expected_overhead_fraction'] * 100:.1f}% of its update time: a cross-check on the whole-run "
        "medians, which move by several percent from batch to batch when other jobs share the machine.", "",
        f"Split of one save (mean of 50 more saves, {inproc['mean_save_ms_split_phase']:.2f} ms each):", "",
        "| part | ms |", "|---|---|",
        *[f"| {label} | {ms:.2f} |" for label, ms in inproc["split_of_one_save_ms"].items()], "",
        "Checkpoint files: " + ", ".join(f"{name} {size:,} bytes" for name, size in
                                          sorted(inproc["checkpoint_file_bytes"].items())) + ".", "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Run both parts and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--save-every", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "checkpoint_cost")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="proximo-checkpoint-cost-"))
    load_before = os.getloadavg()[0]  # other jobs on a shared machine show up here, not in the medians
    try:
        whole = whole_runs(args.steps, args.save_every, args.repeats, scratch)
        inproc = in_process(args.steps, args.save_every, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    data = {"command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
            "machine": machine(), "settings": vars(args) | {"out": str(args.out)},
            "train_commands": {"A": train_command(Path("RUN"), args.steps, args.save_every),
                               "B": train_command(Path("RUN"), args.steps, 0)},
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
            "whole_runs": whole, "in_process": inproc}
    write_results(args.out, data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
