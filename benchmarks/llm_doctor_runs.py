"""Record the two language-model runs the doctor's tests judge (tests/data/llm_doctor/, see its README).

    python benchmarks/llm_doctor_runs.py [--work DIR]

Trains on the CPU, one torch thread, the `add` task with 2-digit operands and the built-in tiny model:

1. SFT until held-out sampled exact match reaches 0.5 (the policy both later runs start from);
2. a reward model trained briefly (100 steps) on the task's pairs, an exact answer against a rule-made corruption:
   a weak proxy of exact match;
3. PPO-RLHF against that reward model with a small fixed KL penalty, the exact-match reward of the same samples
   logged beside it (`accuracy`): the over-optimization run;
4. GRPO on the exact-match reward: the healthy run.

Then copies each RL run's updates.jsonl, diagnostics.jsonl (the live warnings) and config.json (paths made
relative) into tests/data/llm_doctor/<name>/. Prints each command and its wall time.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--task", "add", "--digits", "2", "--seed", "1", "--no-tensorboard", "--quiet"]
# Each RL run is ~30 s of one CPU core (0.4 s a step): short enough for a shared machine, long enough for three
# windows of 20 updates (the over-optimization rule compares the first and the last).
STEPS = {  # name: the command after `proximo llm`
    "sft": ["sft", "--target-accuracy", "0.5", "--max-steps", "1500", "--eval-every", "50",
            "--num-eval-prompts", "200"],
    "rm": ["rm", "--init", "{sft}", "--max-steps", "100", "--eval-every", "50", "--num-eval-prompts", "200"],
    "rlhf_overopt": ["rlhf", "--init", "{sft}", "--reward-model", "{rm}", "--steps", "60", "--eval-every", "10",
                     "--kl-coef", "0.01", "--prompts-per-step", "64", "--num-eval-prompts", "100"],
    "grpo_healthy": ["grpo", "--init", "{sft}", "--steps", "60", "--eval-every", "10", "--prompts-per-step", "16",
                     "--num-eval-prompts", "100"],
}
RECORDED = ("rlhf_overopt", "grpo_healthy")


def relative(value, work: Path):
    """value with the work folder's paths written as <work>/..., recursively."""
    if isinstance(value, str):
        return value.replace(str(work), "<work>")
    if isinstance(value, dict):
        return {k: relative(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v, work) for v in value]
    return value


def main() -> None:
    """Run the four commands and copy the two RL runs' metrics into tests/data/llm_doctor/."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "llm_doctor")
    parser.add_argument("--only", nargs="*", default=list(STEPS), help="steps to run (earlier ones must exist)")
    args = parser.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="proximo-llm-doctor-"))).resolve()
    dirs = {name: work / name for name in STEPS}
    for name in args.only:
        command = [sys.executable, "-m", "proximo", "llm", *[part.format(**dirs) for part in STEPS[name]],
                   "--run-dir", str(dirs[name]), *COMMON]
        shown = " ".join(["proximo", *command[3:]]).replace(str(work) + "/", "")
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        print(f"{shown}   # {time.perf_counter() - started:.0f} s", flush=True)
        if name in RECORDED:
            target = args.out / name
            target.mkdir(parents=True, exist_ok=True)
            for file in ("updates.jsonl", "diagnostics.jsonl"):
                if (dirs[name] / file).is_file():
                    shutil.copy(dirs[name] / file, target / file)
                elif (target / file).exists():
                    (target / file).unlink()
            config = json.loads((dirs[name] / "config.json").read_text())
            (target / "config.json").write_text(json.dumps(relative(config, work), indent=1) + "\n")


if __name__ == "__main__":
    main()
