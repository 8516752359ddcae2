"""GRPO on your data and your reward, measured: a JSONL file of chat prompts built from the built-in
`add` task (2-digit operands), a user reward function loaded from a module file
(benchmarks/user_rewards/add_reward.py:correct_sum, by the same loader as `--reward`), held-out
exact-match accuracy on a separate JSONL file (the task's held-out partition) before and after GRPO,
per seed.

    .venv/bin/python benchmarks/llm_dataset_grpo.py --seeds 1 2 3

Warm start, once (seed --warm-seed) and shared by every GRPO seed, to keep the run to minutes on a
shared CPU: the tiny model learns the answers of the chat-rendered training prompts
("user: 12+34= assistant:") with proximo's SFT loss (proximo.llm.sft.sft_loss) until its sampled
accuracy on --sft-eval-rows held-out rows reaches --sft-target, so that GRPO starts from a
weak-but-nonzero policy (from a random model the reward is always 0). Then, per seed, GRPO runs from
that model with dataset= the JSONL file, reward_fn= the module spec and eval_dataset= the held-out
JSONL (all --eval-rows rows, before and after).

--model bpe-llama runs the same on a model shaped like a user's: a tiny Llama built from a config and a
byte-level BPE tokenizer trained on the task's text (proximo.llm.modeldir), saved as a model
directory under --root; the chat prompts are then rendered by that tokenizer's own chat template on
the normal GRPO path, and the warm start's SFT prompts are the same renderings. --lora-r R trains
GRPO's LoRA adapter (lora_r=R, --lora-alpha, peft's default targets) instead of every weight; the
warm start stays a full SFT and is shared, so full and LoRA runs of a seed start from one model.

    .venv/bin/python benchmarks/llm_dataset_grpo.py --model bpe-llama --seeds 1 2 3
    .venv/bin/python benchmarks/llm_dataset_grpo.py --model bpe-llama --lora-r 8 --lr 1e-3 --seeds 1 2 3

Writes benchmarks/results/llm_dataset_grpo.json and .md (char model, full fine-tuning) or
llm_dataset_grpo_<model>[_lora<R>].json and .md.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import summary_speeds  # noqa: E402
from proximo.llm import GRPO  # noqa: E402
from proximo.llm.data import render_prompt
from proximo.llm.modeldir import make_model_dir, task_texts
from proximo.llm.models import load_model, save_model
from proximo.llm.run import evaluate, make_optimizer
from proximo.llm.sft import sft_loss
from proximo.llm.tasks import get_task
from proximo.runtime import seed_everything, set_threads

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REWARD = HERE / "user_rewards" / "add_reward.py"
MODELS = ("tiny", "bpe-llama")  # proximo's built-in char GPT-2, or a model directory made like a user's
NOTES = ("Every GRPO seed starts from the same warm-start model: greedy accuracy before is the same number, "
         "while sampled accuracy before differs because each seed draws its own samples (temperature 1; on "
         "the held-out rows one binomial standard deviation is about 2.6 points at 0.3 over 300 rows). The warm start's "
         "accuracy is on the first --sft-eval-rows held-out rows, checked every --sft-eval-every steps, so "
         "it can pass the target between checks. Wall seconds exceed CPU seconds: the 2-core machine was "
         "shared with other jobs.")


def chat_row(task, prompt: str) -> dict:
    """One JSONL row: the task prompt as a user message, the exact answer as a column."""
    return {"prompt": [{"role": "user", "content": prompt}], "answer": task.answer(prompt)}


def write_data(task, root: Path, train_rows: int, eval_rows: int) -> tuple[Path, Path]:
    """train.jsonl (distinct training-partition problems) and eval.jsonl (the task's held-out ones)."""
    rng = random.Random(0)
    train = list(dict.fromkeys(task.sample_prompts(rng, 4 * train_rows)))[:train_rows]
    paths = root / "train.jsonl", root / "eval.jsonl"
    for path, prompts in zip(paths, (train, task.held_out_prompts(eval_rows))):
        path.write_text("".join(json.dumps(chat_row(task, p)) + "\n" for p in prompts))
    return paths


def base_model(args, task, root: Path) -> str | Path:
    """What the warm start loads: the built-in name, or the bpe-llama model directory (made once)."""
    if args.model == "tiny":
        return "tiny"
    directory = root / "model-bpe-llama"
    if not (directory / "model.safetensors").is_file():
        # The tokenizer learns the task's text (training partition only) as a user's would learn theirs.
        make_model_dir(directory, task_texts(task, 4000), family="llama", hidden=128, layers=3, heads=4,
                       seed=args.warm_seed)
    return directory


def warm_start(seed: int, task, train: list[dict], held: list[dict], args, out: Path,
               model_source: str | Path = "tiny") -> dict:
    """SFT on the rendered chat prompts until sampled accuracy on held >= args.sft_target; saves to out."""
    rng = seed_everything(seed)
    model, tokenizer, _ = load_model(model_source, seed=seed)
    optimizer = make_optimizer(model, argparse.Namespace(learning_rate=args.sft_lr, adam_eps=1e-8,
                                                         weight_decay=0.0))
    # The same rendering GRPO will give these prompts: the tokenizer's chat template when it has one.
    render = lambda messages: render_prompt(messages, tokenizer)  # noqa: E731
    texts = [render(r["prompt"]) for r in train]
    held_texts = [render(r["prompt"]) for r in held]
    answers = {render(r["prompt"]): r["answer"] for r in train + held}

    def exact(prompts, completions):
        return [float(c.strip() == answers[p]) for p, c in zip(prompts, completions)]

    accuracy, step = 0.0, 0
    while step < args.sft_max_steps:
        step += 1
        for group in optimizer.param_groups:
            group["lr"] = args.sft_lr * min(1.0, step / 100)
        batch = [rng.randrange(len(texts)) for _ in range(args.sft_batch)]
        loss, _ = sft_loss(model, tokenizer, [texts[i] for i in batch], [answers[texts[i]] for i in batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.clip_grad_norm_(1.0)
        optimizer.step()
        if step % args.sft_eval_every == 0:
            accuracy = evaluate(model, tokenizer, held_texts, exact, task.max_new_tokens)["reward"]
            print(f"warm start (seed {seed}) step {step}: sampled accuracy {accuracy:.3f}", flush=True)
            if accuracy >= args.sft_target:
                break
    save_model(model.eval(), tokenizer, out)
    summary = {"sft_steps": step, "sft_accuracy": accuracy}
    (out / "warm_start.json").write_text(json.dumps(summary))
    return summary


def run_seed(seed: int, args, root: Path, warm_dir: Path, train_path: Path, eval_path: Path) -> dict:
    """GRPO from the warm start on the JSONL dataset with the module's reward; the seed's figures."""
    task = get_task("add", args.digits)
    lora = dict(lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_target=args.lora_target) if args.lora_r else {}
    grpo = GRPO(warm_dir, reward_fn=f"{REWARD}:correct_sum", dataset=train_path,
                eval_dataset=eval_path, run_dir=root / f"grpo-{run_tag(args)}-s{seed}", seed=seed, steps=args.grpo_steps,
                learning_rate=args.lr, group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                num_minibatches=args.minibatches, loss_aggregation=args.loss_aggregation,
                scale_rewards=args.scale_rewards, max_new_tokens=task.max_new_tokens,
                eval_every=args.grpo_eval_every, num_eval_prompts=args.eval_rows, tensorboard=False,
                torch_threads=args.threads, **lora)
    summary = grpo.train()
    before, after = summary["before"], summary["after"]
    return {
        "seed": seed,
        "sampled_before": before["eval_sampled_accuracy"], "sampled_after": after["eval_sampled_accuracy"],
        "greedy_before": before["eval_greedy_accuracy"], "greedy_after": after["eval_greedy_accuracy"],
        "sampled_gain_points": 100 * (after["eval_sampled_accuracy"] - before["eval_sampled_accuracy"]),
        "greedy_change_points": 100 * (after["eval_greedy_accuracy"] - before["eval_greedy_accuracy"]),
        "grpo_steps": summary["steps"], "gen_tokens_per_s": summary_speeds(summary)["gen_tokens_per_s"],
        "grpo_wall_s": summary["wall_time_s"], "grpo_cpu_s": summary["cpu_time_s"],
        **({"lora": summary["lora"]} if "lora" in summary else {}),
    }


def run_tag(args) -> str:
    """The run's name: model and, with LoRA, its rank (results files and GRPO run folders use it)."""
    tag = args.model.replace("-", "_") + (f"_lora{args.lora_r}" if args.lora_r else "")
    return tag + ("_" + args.lora_target.replace(",", "_") if args.lora_r and args.lora_target else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--lora-r", type=int, default=0, help="GRPO trains a LoRA adapter of this rank; 0: every weight")
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-target", default="", help="comma-separated modules; '': peft's default for the family")
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--eval-rows", type=int, default=300)
    parser.add_argument("--warm-seed", type=int, default=0)
    parser.add_argument("--sft-target", type=float, default=0.15)
    parser.add_argument("--sft-eval-every", type=int, default=50)
    parser.add_argument("--sft-eval-rows", type=int, default=100)
    parser.add_argument("--sft-max-steps", type=int, default=1500)
    parser.add_argument("--sft-batch", type=int, default=128)
    parser.add_argument("--grpo-steps", type=int, default=200)
    parser.add_argument("--grpo-eval-every", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--loss-aggregation", default="dapo")
    parser.add_argument("--scale-rewards", default="group")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", type=Path, default=Path("runs/bench-llm-dataset-grpo"))
    parser.add_argument("--out", default=None, help="results file stem (default from --model and --lora-r)")
    parser.add_argument("--note", action="append", default=[],
                        help="a paragraph for the markdown's notes (what was tried before this run); repeatable")
    args = parser.parse_args()
    if args.out is None:
        # The char-model full fine-tuning results keep their old name; every other run gets its own files.
        args.out = "llm_dataset_grpo" if run_tag(args) == "tiny" else f"llm_dataset_grpo_{run_tag(args)}"
    set_threads(args.threads)
    args.root.mkdir(parents=True, exist_ok=True)
    task = get_task("add", args.digits)
    train_path, eval_path = write_data(task, args.root, args.train_rows, args.eval_rows)
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    # The warm start is shared by full and LoRA runs of one model (it does not depend on --lora-r).
    warm_dir = args.root / (f"warm-s{args.warm_seed}" if args.model == "tiny" else
                            f"warm-{args.model}-s{args.warm_seed}")
    wall, cpu = time.perf_counter(), time.process_time()
    if (warm_dir / "warm_start.json").is_file():
        warm = json.loads((warm_dir / "warm_start.json").read_text())  # deterministic per seed: reuse it
        warm.update(reused=True)
    else:
        warm = warm_start(args.warm_seed, task, read(train_path), read(eval_path)[:args.sft_eval_rows], args,
                          warm_dir, base_model(args, task, args.root))
        warm.update(wall_s=round(time.perf_counter() - wall, 1), cpu_s=round(time.process_time() - cpu, 1))
    print(json.dumps({"warm_start": warm}), flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args, args.root, warm_dir, train_path, eval_path))
        print(json.dumps(rows[-1]), flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("seeds", "out", "note")}
    result = {"machine": platform.machine(), "torch": torch.__version__, "settings": settings,
              "command": "python benchmarks/llm_dataset_grpo.py " + shlex.join(sys.argv[1:]), "notes": args.note,
              "warm_start": warm, "seeds": rows,
              "mean_sampled_gain_points": statistics.mean(r["sampled_gain_points"] for r in rows)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    what = {"tiny": "built-in char GPT-2", "bpe-llama": "tiny Llama + BPE tokenizer model directory"}[args.model]
    what += f", LoRA r={args.lora_r} alpha={args.lora_alpha:g}" if args.lora_r else ", full fine-tuning"
    lines = [f"# GRPO on a JSONL dataset of chat prompts with a user reward module (`add`, {args.digits}-digit; "
             f"{what})",
             "", f"Machine: {result['machine']}, torch {result['torch']}, {args.threads} torch thread(s). "
             f"Settings: {json.dumps(settings)}", "",
             f"Command: `{result['command']}`", "",
             f"Warm start (seed {args.warm_seed}, shared by all GRPO seeds): {json.dumps(warm)}", "",
             "| GRPO seed | sampled before | sampled after | gain (points) | greedy before | greedy after | "
             "GRPO steps | gen tokens/s | GRPO wall s | GRPO CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['sampled_before']:.3f} | {r['sampled_after']:.3f} | "
                     f"{r['sampled_gain_points']:+.1f} | {r['greedy_before']:.3f} | {r['greedy_after']:.3f} | "
                     f"{r['grpo_steps']} | {r['gen_tokens_per_s']:,.0f} | {r['grpo_wall_s']:.0f} | "
                     f"{r['grpo_cpu_s']:.0f} |")
    lines += ["", f"Sampled-accuracy gain: mean {result['mean_sampled_gain_points']:+.1f} points over "
              f"{len(rows)} seed(s).", "", NOTES, *(x for note in args.note for x in ("", note))]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
