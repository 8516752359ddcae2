"""PPO-RLHF with a reward model trained from a preference JSONL (issue 14), every phase through the CLI
a user would run, on a model directory the way a user's looks (transformers Llama + BPE tokenizer + chat
template, proximo.llm.modeldir):

    proximo llm sft  --model MODEL --dataset sft.jsonl --eval-dataset sft_eval.jsonl --target-accuracy T
    proximo llm rm   --init SFT --dataset prefs.jsonl --eval-dataset prefs_eval.jsonl
    proximo llm rlhf --init SFT --reward-model RM --dataset prompts.jsonl --eval-dataset prompts_eval.jsonl \\
                     --eval-reward proximo:exact_match

Data: the built-in `add` task (2-digit operands) as chat rows: training rows from the task's training
partition, held-out rows from its held-out partition (disjoint problems). Preference pairs: chosen = the
exact sum, rejected = a plausible wrong sum (Task.corrupt: half the time one digit off by one, else a digit
changed, dropped, added or swapped). The RM alone drives RLHF; exact match against the `answer` column
(--eval-reward) is measured only, on the training samples of each step and on the held-out prompts every
--eval-every steps, so that reward over-optimization shows as a rising RM score over a flat or falling
true accuracy.

    .venv/bin/python benchmarks/llm_rlhf_preferences.py

Writes benchmarks/results/llm_rlhf_preferences.json and .md.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import shutil
import time
from pathlib import Path

import torch

from proximo.cli import main as proximo_main
from proximo.llm.modeldir import make_model_dir, task_texts
from proximo.llm.tasks import get_task

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def user(text: str) -> list[dict]:
    """A one-message chat prompt."""
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    """A one-message assistant completion (TRL's conversational completion)."""
    return [{"role": "assistant", "content": text}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """rows as JSON lines into path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_data(task, root: Path, args) -> dict[str, Path]:
    """The six JSONL files: SFT, preference and prompt rows, each with a held-out twin."""
    rng = random.Random(0)
    train = list(dict.fromkeys(task.sample_prompts(rng, 10 * args.train_rows)))
    rng.shuffle(train)
    held = task.held_out_prompts(2 * args.eval_rows)
    # Separate problems for SFT and for the preferences/RL prompts: the RM and RLHF see sums SFT never showed.
    sft_train, pref_train = train[:args.train_rows], train[args.train_rows:2 * args.train_rows]
    sft_held, rl_held = held[:args.eval_rows], held[args.eval_rows:]

    def sft_rows(prompts):
        return [{"prompt": user(p), "completion": assistant(task.answer(p))} for p in prompts]

    def pref_rows(prompts):
        return [{"prompt": user(p), "chosen": assistant(task.answer(p)),
                 "rejected": assistant(task.corrupt(task.answer(p), rng))} for p in prompts]

    def prompt_rows(prompts):
        return [{"prompt": user(p), "answer": task.answer(p)} for p in prompts]

    files = {"sft": sft_rows(sft_train), "sft_eval": sft_rows(sft_held), "prefs": pref_rows(pref_train),
             "prefs_eval": pref_rows(rl_held), "prompts": prompt_rows(pref_train), "prompts_eval": prompt_rows(rl_held)}
    return {name: write_jsonl(root / f"{name}.jsonl", rows) for name, rows in files.items()}


def cli(argv: list[str]) -> float:
    """Run one proximo command; its wall seconds (a non-zero exit stops the benchmark)."""
    started = time.perf_counter()
    print("$ proximo " + " ".join(argv), flush=True)
    code = proximo_main(argv)
    if code != 0:
        raise SystemExit(f"proximo {' '.join(argv)} exited {code}")
    return time.perf_counter() - started


def read_metrics(run: Path) -> list[dict]:
    """metrics.csv rows of a run, numbers as floats (empty cells None)."""
    with open(run / "metrics.csv") as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(handle)]


def curve(rows: list[dict], every: int) -> list[dict]:
    """RLHF rows averaged over blocks of `every` steps, with the held-out evaluation at each block's end."""
    steps = [r for r in rows if r["global_step"] and r["global_step"] > 0]
    out = []
    for start in range(0, len(steps), every):
        block = steps[start:start + every]

        def mean(key):
            values = [r[key] for r in block if r.get(key) is not None]
            return sum(values) / len(values) if values else None
        last = block[-1]
        out.append({"steps": f"{int(block[0]['global_step'])}-{int(last['global_step'])}", "score": mean("score"),
                    "kl_ref": mean("kl_ref"), "train_accuracy": mean("accuracy"),
                    "entropy": mean("entropy"), "eval_sampled": last.get("eval_sampled_accuracy"),
                    "eval_greedy": last.get("eval_greedy_accuracy")})
    return out


def fmt(value, spec=".3f") -> str:
    """A table cell: the number, or a dash for none."""
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sft-target", type=float, default=0.3, help="stop SFT at this held-out greedy exact match")
    parser.add_argument("--sft-max-steps", type=int, default=1500)
    parser.add_argument("--sft-batch", type=int, default=128)
    parser.add_argument("--sft-eval-every", type=int, default=10)
    parser.add_argument("--rm-steps", type=int, default=600)
    parser.add_argument("--rl-steps", type=int, default=100)
    parser.add_argument("--rl-eval-every", type=int, default=10)
    parser.add_argument("--rl-prompts", type=int, default=64)
    parser.add_argument("--rl-lr", type=float, default=3e-5)
    parser.add_argument("--kl-coefs", type=float, nargs="+", default=[0.05, 0.3],
                        help="one RLHF run per fixed KL coefficient, all from the same SFT model and RM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=Path("runs/bench-llm-rlhf-preferences"))
    parser.add_argument("--out", default="llm_rlhf_preferences")
    args = parser.parse_args()
    wall, cpu = time.perf_counter(), time.process_time()
    task = get_task("add", args.digits)
    if args.root.exists():
        shutil.rmtree(args.root)
    args.root.mkdir(parents=True)
    model = make_model_dir(args.root / "model", task_texts(task, 4000))
    files = write_data(task, args.root, args)
    sft, rm = args.root / "sft", args.root / "rm"
    common = ["--seed", str(args.seed), "--torch-threads", str(args.threads), "--quiet", "--no-tensorboard"]
    times = {}
    times["sft"] = cli(["llm", "sft", "--model", str(model), "--dataset", str(files["sft"]),
                        "--eval-dataset", str(files["sft_eval"]), "--target-accuracy", str(args.sft_target),
                        "--max-steps", str(args.sft_max_steps), "--batch-size", str(args.sft_batch),
                        "--eval-every", str(args.sft_eval_every), "--run-dir", str(sft), *common])
    times["rm"] = cli(["llm", "rm", "--init", str(sft), "--dataset", str(files["prefs"]),
                       "--eval-dataset", str(files["prefs_eval"]), "--max-steps", str(args.rm_steps),
                       "--eval-every", "200", "--run-dir", str(rm), *common])
    arms = []
    for coef in args.kl_coefs:
        run = args.root / f"rlhf-kl{coef}"
        seconds = cli(["llm", "rlhf", "--init", str(sft), "--reward-model", str(rm),
                       "--dataset", str(files["prompts"]), "--eval-dataset", str(files["prompts_eval"]),
                       "--eval-reward", "proximo:exact_match", "--steps", str(args.rl_steps),
                       "--eval-every", str(args.rl_eval_every), "--prompts-per-step", str(args.rl_prompts),
                       "--learning-rate", str(args.rl_lr), "--kl-coef", str(coef),
                       "--max-new-tokens", str(task.max_new_tokens), "--run-dir", str(run), *common])
        arms.append({"kl_coef": coef, "wall_s": round(seconds, 1),
                     "summary": json.loads((run / "summary.json").read_text()),
                     "curve": curve(read_metrics(run), args.rl_eval_every)})
    summaries = {name: json.loads((run / "summary.json").read_text()) for name, run in (("sft", sft), ("rm", rm))}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    result = {"machine": platform.machine(), "torch": torch.__version__, "settings": settings,
              "phase_wall_s": {k: round(v, 1) for k, v in times.items()},
              "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
              "summaries": summaries, "rlhf": arms}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    s, r = summaries["sft"], summaries["rm"]
    rl_walls = " + ".join(f"{arm['wall_s']:.0f}" for arm in arms)
    defaults = parser.parse_args([])
    changed = [f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items()
               if k not in ("root", "out") and getattr(defaults, k) != v]
    lines = [
        f"# PPO-RLHF with a reward model from a preference JSONL (`add`, {args.digits}-digit, seed {args.seed})", "",
        f"Machine: {result['machine']}, torch {result['torch']}, {args.threads} torch thread(s), shared 2-core CPU. "
        f"Wall time {result['wall_s']:.0f} s (SFT {times['sft']:.0f}, RM {times['rm']:.0f}, RLHF "
        f"{rl_walls} for kl_coef {', '.join(map(str, args.kl_coefs))}).",
        "", "Command:", "", f"    .venv/bin/python benchmarks/llm_rlhf_preferences.py {' '.join(changed)}".rstrip(), "",
        "which runs (paths under the run root):", "",
        f"    proximo llm sft --model model --dataset sft.jsonl --eval-dataset sft_eval.jsonl --target-accuracy "
        f"{args.sft_target} --max-steps {args.sft_max_steps} --batch-size {args.sft_batch} --eval-every {args.sft_eval_every}",
        f"    proximo llm rm --init sft --dataset prefs.jsonl --eval-dataset prefs_eval.jsonl --max-steps {args.rm_steps}",
        f"    proximo llm rlhf --init sft --reward-model rm --dataset prompts.jsonl --eval-dataset prompts_eval.jsonl "
        f"--eval-reward proximo:exact_match --steps {args.rl_steps} --eval-every {args.rl_eval_every} --prompts-per-step "
        f"{args.rl_prompts} --learning-rate {args.rl_lr} --kl-coef BETA --max-new-tokens {task.max_new_tokens}  "
        f"# BETA in {', '.join(map(str, args.kl_coefs))}",
        "", f"Model: tiny Llama (hidden 128, 3 layers) + BPE tokenizer with a chat template (proximo.llm.modeldir), "
        f"random init. Data: {args.train_rows} SFT rows and {args.train_rows} other training problems as preference "
        f"pairs and RL prompts; {args.eval_rows} held-out problems for SFT and {args.eval_rows} others for the RM "
        f"pairs and RLHF evaluation (the task's held-out partition).", "",
        f"SFT: {s['steps']} steps, stopped by {s['stop_reason']}; held-out completion NLL {s['eval_nll_before']:.3f} -> "
        f"{s['eval_nll']:.3f} nats/token, greedy exact match {s['eval_greedy_accuracy_before']:.3f} -> "
        f"{s['eval_greedy_accuracy']:.3f}.", "",
        f"Reward model: held-out pairwise accuracy {r['pairwise_accuracy_before']:.3f} -> {r['pairwise_accuracy']:.3f} "
        f"({r['eval_pairs']} pairs, {r['steps']} steps).", "",
        "RLHF, blocks of steps: mean RM score and KL to the reference (k1, nats/token) over the block's training "
        "samples, exact match of those samples (`train exact`), and held-out exact match at the block's end "
        f"({min(args.eval_rows, 500)} prompts, sampled at temperature 1 and greedy)."]
    for arm in arms:
        before, after = arm["summary"]["before"], arm["summary"]["after"]
        lines += ["", f"### kl_coef {arm['kl_coef']} (fixed)", "",
                  "| steps | RM score | KL/token | train exact | entropy | held-out sampled | held-out greedy |",
                  "|---|---|---|---|---|---|---|",
                  f"| 0 (before) | - | - | - | - | {before['eval_sampled_accuracy']:.3f} | "
                  f"{before['eval_greedy_accuracy']:.3f} |"]
        for b in arm["curve"]:
            lines.append(f"| {b['steps']} | {fmt(b['score'])} | {fmt(b['kl_ref'], '.4f')} | "
                         f"{fmt(b['train_accuracy'])} | {fmt(b['entropy'])} | {fmt(b['eval_sampled'])} | "
                         f"{fmt(b['eval_greedy'])} |")
        lines += ["", f"Held-out exact match: sampled {before['eval_sampled_accuracy']:.3f} -> "
                  f"{after['eval_sampled_accuracy']:.3f}, greedy {before['eval_greedy_accuracy']:.3f} -> "
                  f"{after['eval_greedy_accuracy']:.3f}."]
    noise = (f"One binomial standard deviation on {min(args.eval_rows, 500)} held-out "
             f"prompts is about 0.026 at an accuracy of 0.16 and 0.032 at 0.28; the `train exact` column averages "
             f"{args.rl_eval_every} x {args.rl_prompts} samples.")
    lines += ["", "## Reading", "", noise, ""]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
