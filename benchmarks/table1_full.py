"""The PPO paper's Table 1 at its full protocol (7 envs x 11 settings x 3 seeds x 1M steps), env by env, over
as many sittings as it takes: one command that picks up where the last sitting stopped.

    python benchmarks/table1_full.py --sweep-dir /path/outside/the/repo [--envs reacher,swimmer]

Each env is its own sweep, SWEEP_DIR/<env> (a sweep folder holds one grid). Before an env runs, the finished
trials of it kept in the repository (benchmarks/results/table1-1M-runs/runs/, a folder per trial with its
summary.json) are copied into that folder's runs/, so a new machine never reruns them; `proximo paper table1`
then trains only what is missing (an interrupted population resumes from its checkpoints when the folder
survived). After the env, its finished trials' small files go back into the repository (config, trial,
summary, metrics, diagnostics; the checkpoints stay outside). Last, the combined report
benchmarks/results/table1-1M.{md,json,png} is rewritten over every env finished so far, from a folder
SWEEP_DIR/report-<envs> seeded with their trials (nothing trains there). Commit benchmarks/results/ after each
env. Runs with 2 Ray workers under the caller's nice level.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import comma_choices  # noqa: E402

KEPT = HERE / "results" / "table1-1M-runs" / "runs"
REPORT = HERE / "results" / "table1-1M"
ENV_KEYS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5",
            "inverteddoublependulum": "InvertedDoublePendulum-v5", "invertedpendulum": "InvertedPendulum-v5",
            "reacher": "Reacher-v5", "swimmer": "Swimmer-v5", "walker2d": "Walker2d-v5"}
KEEP_FILES = ("config.json", "trial.json", "summary.json", "metrics.csv", "diagnostics.jsonl")
TRIALS_PER_ENV = 33  # 11 settings x 3 seeds


def finished(folder: Path, env_id: str) -> list[Path]:
    """The finished trial folders of env_id under folder (summary.json is the last file a run writes)."""
    return sorted(p for p in folder.glob(f"{env_id}__*") if (p / "summary.json").is_file())


def seed_sweep(runs: Path, env_ids: list[str]) -> int:
    """Copy the repository's finished trials of env_ids into a sweep folder's runs/ (never over a trial there)."""
    runs.mkdir(parents=True, exist_ok=True)
    copied = 0
    for trial in [t for env_id in env_ids for t in finished(KEPT, env_id)]:
        if not (runs / trial.name).exists():
            shutil.copytree(trial, runs / trial.name)
            copied += 1
    return copied


def keep(runs: Path, env_id: str) -> int:
    """Copy env_id's finished trials' small files from the sweep folder into the repository."""
    kept = 0
    for trial in finished(runs, env_id):
        target = KEPT / trial.name
        target.mkdir(parents=True, exist_ok=True)
        for name in KEEP_FILES:
            if (trial / name).is_file():
                shutil.copy2(trial / name, target / name)
        kept += 1
    return kept


SITTINGS = KEPT.parent / "sittings.jsonl"  # one line per env per sitting: the honest sum of wall time


def log_sitting(env: str, started: float, wall_s: float, code: int, kept: int) -> None:
    """Append one sitting of an env (its start, wall seconds, exit status, finished trials after it)."""
    record = {"env": env, "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "wall_s": round(wall_s, 1), "exit": code, "finished_trials": kept}
    with open(SITTINGS, "a") as f:
        f.write(json.dumps(record) + "\n")


def sitting_hours() -> dict[str, float]:
    """Summed wall hours per env over every sitting logged in SITTINGS."""
    hours: dict[str, float] = {}
    if SITTINGS.is_file():
        for line in SITTINGS.read_text().splitlines():
            record = json.loads(line)
            hours[record["env"]] = hours.get(record["env"], 0.0) + record["wall_s"] / 3600
    return hours


def table1(envs: list[str], sweep_dir: Path, output: Path | None) -> int:
    """`proximo paper table1` at the paper's protocol over envs; its exit status."""
    command = [sys.executable, "-m", "proximo", "paper", "table1", "--steps", "1000000", "--seeds", "3",
               "--envs", ",".join(envs), "--workers", "2", "--sweep-dir", str(sweep_dir), "--progress-every", "120"]
    if output is not None:
        command += ["--output", os.path.relpath(output)]  # the report quotes its command: no machine's paths
    print("$", " ".join(command), flush=True)
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    """Train the envs that are not finished, one at a time, keeping each one's trials and the combined report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-dir", type=Path, required=True, help="the sweep folder (outside the repository)")
    parser.add_argument("--envs", default=",".join(ENV_KEYS), help="comma list of " + ", ".join(ENV_KEYS))
    args = parser.parse_args(argv)
    wanted = comma_choices(args.envs, list(ENV_KEYS), "table1_full")
    for env in wanted:
        env_id, env_dir = ENV_KEYS[env], args.sweep_dir / env
        runs = env_dir / "runs"
        copied = seed_sweep(runs, [env_id])
        if len(finished(runs, env_id)) >= TRIALS_PER_ENV:
            print(f"table1_full: {env_id} already finished", flush=True)
            continue
        print(f"table1_full: {env_id}: {copied} finished trials copied from the repository into {runs}", flush=True)
        started = time.time()
        code = table1([env], env_dir, None)
        wall, kept = time.time() - started, keep(runs, env_id)
        log_sitting(env, started, wall, code, kept)
        print(f"table1_full: {env_id} exit {code}, {wall:.0f} s wall this sitting; {kept} finished trials kept in "
              f"{KEPT}", flush=True)
        if code != 0:
            return code
    done = [env for env in ENV_KEYS if len(finished(KEPT, ENV_KEYS[env])) >= TRIALS_PER_ENV]
    if done:
        # Every trial of these envs is finished, so this only reads the runs and writes the report.
        report_dir = args.sweep_dir / ("report-" + "-".join(done))
        seed_sweep(report_dir / "runs", [ENV_KEYS[env] for env in done])
        code = table1(done, report_dir, REPORT)
        if code == 0:
            mark_report(REPORT.with_suffix(".md"), done, report_dir)
        return code
    return 0


def mark_report(report: Path, done: list[str], sweep_dir: Path) -> None:
    """Say under the report's title how many of the paper's envs it covers (how to go on while some are
    missing) and the wall time summed over every sitting."""
    title, rest = report.read_text().split("\n", 1)
    names = ", ".join(ENV_KEYS[env] for env in done)
    hours = sitting_hours()
    walls = "; ".join(f"{ENV_KEYS[env]} {hours[env]:.2f} h" for env in done if env in hours)
    wall_line = (f" Wall time on 2 cores, summed over sittings (benchmarks/results/table1-1M-runs/sittings.jsonl): "
                 f"{walls}; {sum(hours[e] for e in done if e in hours):.2f} h in all." if walls else "")
    if len(done) < len(ENV_KEYS):
        note = (f"\n**Partial: {len(done)} of the paper's {len(ENV_KEYS)} envs so far** ({names}; "
                f"{len(done) * TRIALS_PER_ENV} of {len(ENV_KEYS) * TRIALS_PER_ENV} runs). Every finished trial's "
                "files are kept in `benchmarks/results/table1-1M-runs/runs/`; `python benchmarks/table1_full.py "
                "--sweep-dir DIR` goes on from them without rerunning any. The command below made this report from "
                "those trials.")
    else:
        note = (f"\n**All {len(ENV_KEYS)} of the paper's envs, {len(ENV_KEYS) * TRIALS_PER_ENV} runs of 1M steps**, "
                "trained over several sittings by `python benchmarks/table1_full.py --sweep-dir DIR` (no finished "
                "trial was ever rerun). Every trial's files are kept in `benchmarks/results/table1-1M-runs/runs/`; "
                "the command below made this report from them.")
    rest = rest.replace(str(sweep_dir), "DIR")  # no machine's paths in the report
    report.write_text(title + "\n" + note + wall_line + "\n" + rest)


if __name__ == "__main__":
    sys.exit(main())
