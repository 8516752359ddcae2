"""The GPU check of the LLM side, as one prepared script for a lent accelerator (under 10 minutes): GRPO
with LoRA and gradient checkpointing in bf16 (and full fine-tuning in bf16 autocast) on Llama shapes built
from a config, 0.1B, 0.5B and 1B parameters, reporting generated tokens/s, step time and peak GPU memory.

    python benchmarks/llm_gpu.py --out $OUT/llm_gpu                  # cuda; shapes 0.1B, 0.5B and 1B
    python benchmarks/llm_gpu.py --device cpu --shapes tiny --steps 2 --out /tmp/llm_gpu_dry   # dry run

The model directory is made by proximo.llm.modeldir (random weights, a BPE tokenizer trained on the `add`
task's text, chat template, weights sharded past 2 GB as save_pretrained shards them), so nothing is
downloaded; the reward is exact match on 2-digit addition (a random model scores 0: this measures speed
and memory, not learning). Tokens are counted from the rollouts the trainer trains on (a counting wrapper
of its sampler); a run that counts none stops with an error. Writes <out>.json after every run (a timeout
keeps what finished) and <out>.md at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import parameter_count, require_counted  # noqa: E402
from llm import counting_sampler  # noqa: E402
from proximo.llm import GRPO  # noqa: E402
from proximo.llm.modeldir import make_model_dir, task_texts  # noqa: E402
from proximo.llm.tasks import get_task  # noqa: E402

# (hidden, layers, heads), a 4x MLP and a 512-token vocabulary: about 0.11B, 0.47B and 1.07B parameters.
SHAPES = {"tiny": (128, 3, 4), "0.1B": (768, 12, 12), "0.5B": (1024, 28, 16), "1B": (2048, 16, 16)}
# What each shape trains: LoRA (rank) runs first, full fine-tuning (0) last; full fine-tuning of 1B in
# fp32 master weights + Adam moments is ~17 GB, within one 80 GB GPU.
DEFAULT_RANKS = (16, 0)


def run_one(model_dir: Path, device: str, lora_r: int, args) -> dict:
    """A short GRPO run; returns tokens/s counted from the trained rollouts, seconds per step, peak memory."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sampler = counting_sampler()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = GRPO(model_dir, task="add", digits=2, run_dir=run_dir, tensorboard=False, device=device,
                       dtype=args.dtype, lora_r=lora_r, lora_alpha=2.0 * max(lora_r, 1), steps=args.steps,
                       prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                       max_new_tokens=args.max_new_tokens, num_eval_prompts=8, eval_every=0, max_prompt_tokens=64,
                       gradient_checkpointing=args.gradient_checkpointing, micro_batch_size=args.micro_batch_size,
                       sampler=sampler, torch_threads=0)
        optimizer = trainer.make_optimizer()
        trainer.step_count += 1
        trainer.step(optimizer)  # warm-up: kernels, allocator, first-touch
        sampler.tokens = sampler.completions = 0
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(args.steps):
            trainer.step_count += 1
            trainer.step(optimizer)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    require_counted("completion tokens (the counting sampler is off the trainer's path)", sampler.tokens)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else None
    return {"lora_r": lora_r, "steps": args.steps, "tokens": sampler.tokens, "completions": sampler.completions,
            "tokens_per_s": sampler.tokens / wall, "seconds_per_step": wall / args.steps, "peak_gpu_mib": peak}


def markdown(results: dict) -> str:
    """The results as a markdown table."""
    lines = [f"# GRPO on a GPU: Llama shapes from a config ({results['device']}, {results['gpu'] or 'no GPU'})", "",
             f"torch {results['torch']}; settings {json.dumps(results['settings'])}", "",
             f"Command: `{results['command']}`", "",
             "| shape | parameters | LoRA r (0: full) | completion tokens/s | s/step | peak GPU MiB |",
             "|---|---|---|---|---|---|"]
    for r in results["runs"]:
        peak = f"{r['peak_gpu_mib']:,.0f}" if r["peak_gpu_mib"] is not None else "-"
        lines.append(f"| {r['shape']} | {r['parameters']:,} | {r['lora_r']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['seconds_per_step']:.2f} | {peak} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every shape x (LoRA, full) and print/write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=["0.1B", "0.5B", "1B"], choices=list(SHAPES))
    parser.add_argument("--lora-ranks", type=int, nargs="+", default=list(DEFAULT_RANKS),
                        help="LoRA ranks to run per shape (0: full fine-tuning)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--prompts-per-step", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--out", type=Path, default=None, help="stem of the .json and .md results")
    args = parser.parse_args()
    settings = {k: v for k, v in vars(args).items() if k not in ("device", "shapes", "out")}
    results = {"device": args.device, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
               "command": "python benchmarks/llm_gpu.py " + " ".join(sys.argv[1:]), "settings": settings, "runs": []}
    with tempfile.TemporaryDirectory() as root:
        for shape in args.shapes:
            hidden, layers, heads = SHAPES[shape]
            model_dir = make_model_dir(Path(root) / shape, task_texts(get_task("add", 2)), "llama", 512, hidden,
                                       layers, heads, max_positions=256, max_shard_size="2GB")
            params = parameter_count(model_dir)
            for lora_r in args.lora_ranks:
                row = {"shape": shape, "parameters": params, **run_one(model_dir, args.device, lora_r, args)}
                print(json.dumps(row), flush=True)
                results["runs"].append(row)
                if args.out:  # written after every run: a timeout still leaves what finished
                    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    if args.out:
        args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
