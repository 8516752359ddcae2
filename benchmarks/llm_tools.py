"""A tool that the task needs: multiplying two 3-digit numbers (the built-in `mul` task, "123x456=" ->
"56088") with and without the built-in calculator tool, held-out exact match after the same training.

    .venv/bin/python benchmarks/llm_tools.py                 # 3 seeds (see --help for sizes)
    .venv/bin/python benchmarks/llm_tools.py --quick         # 1 seed, fewer steps: a smoke run

One model directory is made first (proximo.llm.modeldir: a tiny GPT-2 built from a config, a byte-level BPE
tokenizer trained here on both arms' texts, the <|user|>/<|assistant|>/<|end|> chat template, <|end|> a stop
token), so both arms start from the same weights and tokenizer. Per seed and arm:

  tools     `proximo llm sft` on tool-use demonstrations of the training prompts, two rows per prompt:
            (chat prompt -> the Hermes-format call of proximo:calculator on the two operands) and (chat prompt +
            that call + the tool turn as the chat template renders it -> the product); then `proximo llm grpo
            --tools proximo:calculator --max-turns 2` on the training prompts, reward proximo:exact_match on
            the last policy turn.
  no-tools  `proximo llm sft` on (chat prompt -> the product) for the same prompts and steps; then `proximo llm
            grpo` without tools, same steps, prompts and reward.

Held-out prompts are the task's held-out partition (never drawn for training), scored by the GRPO run's own
evaluation before and after (greedy and sampled at temperature 1), tools arm over whole episodes.

Stated before running, the tool-use result holds when in every seed the tools arm's held-out greedy accuracy
after GRPO is at least 0.5 and at least 0.3 above the no-tools arm's (a 3-digit product is out of reach of
a 2-layer, 64-wide model's "head" after a few hundred steps; copying operands into a call and the result
back is within it).

Writes benchmarks/results/llm_tools.json and .md (llm_tools_quick.* with --quick).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from proximo.cli import main as proximo_main  # noqa: E402
from proximo.llm.modeldir import make_model_dir  # noqa: E402
from proximo.llm.models import load_model  # noqa: E402
from proximo.llm.multiturn import render_reply  # noqa: E402
from proximo.llm.tasks import get_task  # noqa: E402

RESULTS = HERE / "results"
CALL = '<tool_call>{{"name": "calculator", "arguments": {{"expression": "{expr}"}}}}</tool_call>'
END = "<|end|>"  # the chat template's end of turn, a stop token of the model (end_of_turn_stops)


def chat(prompt: str) -> list[dict]:
    """The task prompt as one user message."""
    return [{"role": "user", "content": prompt}]


def rendered(tokenizer, prompt: str) -> str:
    """The chat prompt as the model directory's template renders it (with the assistant's turn opened)."""
    return tokenizer.apply_chat_template(chat(prompt))


def tool_reply(tokenizer, prompt: str, answer: str) -> str:
    """The tool turn after the call (multiturn.render_reply: what the GRPO episodes append)."""
    return render_reply(tokenizer, "tool", [answer], CALL.format(expr=prompt.rstrip("=")), END)


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Rows as JSONL."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_data(task, root: Path, tokenizer, train_rows: int, eval_rows: int) -> dict[str, Path]:
    """SFT files of both arms, the GRPO prompt file and the held-out prompt file."""
    rng = random.Random(0)
    train = list(dict.fromkeys(task.sample_prompts(rng, 4 * train_rows)))[:train_rows]
    held = task.held_out_prompts(eval_rows)
    tools_sft, plain_sft = [], []
    for p in train:
        answer, call = task.answer(p), CALL.format(expr=p.rstrip("="))
        tools_sft.append({"prompt": chat(p), "completion": call + END})
        tools_sft.append({"prompt": rendered(tokenizer, p) + call + END + tool_reply(tokenizer, p, answer),
                          "completion": answer + END})
        plain_sft.append({"prompt": chat(p), "completion": answer + END})
    return {
        "sft_tools": write_rows(root / "sft_tools.jsonl", tools_sft),
        "sft_tools_eval": write_rows(root / "sft_tools_eval.jsonl", tools_sft[:40]),
        "sft_plain": write_rows(root / "sft_plain.jsonl", plain_sft),
        "sft_plain_eval": write_rows(root / "sft_plain_eval.jsonl", plain_sft[:40]),
        "train": write_rows(root / "train.jsonl", [{"prompt": chat(p), "answer": task.answer(p)} for p in train]),
        "held": write_rows(root / "held.jsonl", [{"prompt": chat(p), "answer": task.answer(p)} for p in held]),
    }


def model_texts(task, n: int = 3000) -> list[str]:
    """Tokenizer training text: both arms' transcripts."""
    rng = random.Random(1)
    out = []
    for p in task.sample_prompts(rng, n):
        answer = task.answer(p)
        out.append(f"<|user|>{p}<|end|><|assistant|>{CALL.format(expr=p.rstrip('='))}<|end|><|tool|>{answer}"
                   f"<|end|><|assistant|>{answer}<|end|>")
        out.append(f"<|user|>{p}<|end|><|assistant|>{answer}<|end|>")
    return out


def run_cli(argv: list[str]) -> None:
    """One `proximo ...` command in this process; its output kept quiet, a failure raised."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        code = proximo_main(argv)
    if code != 0:
        raise SystemExit(f"proximo {shlex.join(argv)} exited {code}")


def run_arm(arm: str, seed: int, args, base: Path, data: dict[str, Path], root: Path) -> dict:
    """SFT warm start then GRPO for one arm and seed; returns the held-out figures and timings."""
    tag = f"{arm}-s{seed}"
    sft_dir, grpo_dir = root / f"sft-{tag}", root / f"grpo-{tag}"
    kind = "tools" if arm == "tools" else "plain"
    started = time.perf_counter()
    run_cli(["llm", "sft", "--model", str(base), "--dataset", str(data[f"sft_{kind}"]), "--eval-dataset",
             str(data[f"sft_{kind}_eval"]), "--max-steps", str(args.sft_steps), "--batch-size", str(args.sft_batch),
             "--learning-rate", str(args.sft_lr), "--warmup-steps", "20", "--eval-every", str(args.sft_steps),
             "--num-eval-prompts", "40", "--seed", str(seed), "--run-dir", str(sft_dir), "--quiet",
             "--no-tensorboard"])
    sft_s = time.perf_counter() - started
    grpo = ["llm", "grpo", "--init", str(sft_dir), "--dataset", str(data["train"]), "--eval-dataset",
            str(data["held"]), "--reward", "proximo:exact_match", "--steps", str(args.grpo_steps),
            "--prompts-per-step", str(args.prompts_per_step), "--group-size", str(args.group_size),
            "--max-new-tokens", str(args.max_new_tokens), "--learning-rate", str(args.grpo_lr),
            "--num-eval-prompts", str(args.eval_rows), "--eval-every", "0", "--seed", str(seed),
            "--run-dir", str(grpo_dir), "--quiet", "--no-tensorboard"]
    if arm == "tools":
        grpo += ["--tools", "proximo:calculator", "--max-turns", "2"]
    run_cli(grpo)
    summary = json.loads((grpo_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (grpo_dir / "updates.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("global_step", 0) > 0]
    return {
        "arm": arm, "seed": seed,
        "before_greedy": summary["before"]["eval_greedy_accuracy"],
        "before_sampled": summary["before"]["eval_sampled_accuracy"],
        "after_greedy": summary["after"]["eval_greedy_accuracy"],
        "after_sampled": summary["after"]["eval_sampled_accuracy"],
        "train_reward_first": steps[0]["reward"], "train_reward_last10": summary["train_reward_last10"],
        "turns_last": steps[-1].get("turns"), "tool_calls_last": steps[-1].get("tool_calls"),
        "tool_errors_last": steps[-1].get("tool_errors"),
        "sft_s": round(sft_s, 1), "grpo_s": summary["wall_time_s"], "grpo_cpu_s": summary.get("cpu_time_s"),
    }


def verdict(results: list[dict], seeds: list[int]) -> dict:
    """The stated thresholds, checked per seed."""
    per_seed = {}
    for seed in seeds:
        tools = next(r for r in results if r["arm"] == "tools" and r["seed"] == seed)["after_greedy"]
        plain = next(r for r in results if r["arm"] == "no-tools" and r["seed"] == seed)["after_greedy"]
        per_seed[seed] = {"tools": tools, "no_tools": plain, "holds": tools >= 0.5 and tools - plain >= 0.3}
    return {"threshold": "tools greedy >= 0.5 and >= no-tools + 0.3, every seed", "per_seed": per_seed,
            "holds": all(v["holds"] for v in per_seed.values())}


def markdown(report: dict) -> str:
    """The results as a markdown table."""
    lines = ["# Tool use: mul (3-digit x 3-digit) with and without proximo:calculator", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; total wall time {report['wall_s']:.0f} s, CPU {report['cpu_s']:.0f} s.",
             "", "| arm | seed | held-out greedy before -> after GRPO | sampled before -> after | train reward "
             "first -> last10 | turns / tool calls / tool errors per episode (last step) | SFT s | GRPO s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        tools = ("-" if r["turns_last"] is None else
                 f"{r['turns_last']:.2f} / {r['tool_calls_last']:.2f} / {r['tool_errors_last']:.2f}")
        lines.append(f"| {r['arm']} | {r['seed']} | {r['before_greedy']:.3f} -> {r['after_greedy']:.3f} | "
                     f"{r['before_sampled']:.3f} -> {r['after_sampled']:.3f} | {r['train_reward_first']:.3f} -> "
                     f"{r['train_reward_last10']:.3f} | {tools} | {r['sft_s']:.0f} | {r['grpo_s']:.0f} |")
    for arm in ("tools", "no-tools"):
        values = [r["after_greedy"] for r in report["results"] if r["arm"] == arm]
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        lines.append(f"\nMean held-out greedy accuracy after GRPO, {arm}: {statistics.mean(values):.3f}{spread} "
                     f"({len(values)} seeds, {report['settings']['eval_rows']} held-out prompts).")
    v = report["verdict"]
    lines += ["", f"Threshold ({v['threshold']}): {'holds' if v['holds'] else 'does NOT hold'}.", "",
              "Settings: " + ", ".join(f"{k}={val}" for k, val in report["settings"].items()), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 SFT and 5 GRPO steps, 50 held-out prompts")
    parser.add_argument("--digits", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--sft-batch", type=int, default=32)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--grpo-steps", type=int, default=40)
    parser.add_argument("--grpo-lr", type=float, default=3e-4)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--root", type=Path, default=Path("/tmp/proximo-llm-tools"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.sft_steps, args.grpo_steps, args.eval_rows = args.seeds[:1], 60, 5, 50
    started, cpu_started = time.perf_counter(), time.process_time()
    root = args.root / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    task = get_task("mul", args.digits)
    base = make_model_dir(root / "base", model_texts(task), family="gpt2", vocab_size=512, hidden=64, layers=2,
                          heads=2, max_positions=128, seed=0, end_of_turn_stops=True)
    _, tokenizer, _ = load_model(base)
    data = make_data(task, root, tokenizer, args.train_rows, args.eval_rows)
    results = []
    for seed in args.seeds:
        for arm in ("tools", "no-tools"):
            results.append(run_arm(arm, seed, args, base, data, root))
            print(json.dumps(results[-1]), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("root", "quick")}
    report = {"command": ("python benchmarks/llm_tools.py " + shlex.join(sys.argv[1:])).strip(),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + ", CPU, 1 torch thread",
              "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started,
              "settings": settings, "results": results, "verdict": verdict(results, args.seeds)}
    name = "llm_tools_quick" if args.quick else "llm_tools"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
