"""The GPU check of the LLM side, as one prepared script for a lent accelerator (under 10 minutes):
GRPO with bf16 + LoRA (and full fine-tuning in bf16 autocast) on the biggest Llama shape built from a
config that fits the time, reporting generated tokens/s, step time and peak GPU memory.

    python benchmarks/llm_gpu.py --out $OUT/llm_gpu.json             # cuda; shapes 0.1B and 0.5B
    python benchmarks/llm_gpu.py --device cpu --shapes tiny --steps 2  # a smoke run of the same path

The model directory is made by proximo.llm.modeldir (random weights, a BPE tokenizer trained on the
`add` task's text, chat template), so nothing is downloaded; the task reward is exact match on 2-digit
addition (a random model scores 0: this measures speed and memory, not learning).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from proximo.llm import GRPO  # noqa: E402
from proximo.llm.modeldir import make_model_dir, task_texts  # noqa: E402
from proximo.llm.tasks import get_task  # noqa: E402

# (hidden, layers, heads): about 0.11B and 0.47B parameters at a 512-token vocabulary (Llama MLP 4x).
SHAPES = {"tiny": (128, 3, 4), "0.1B": (768, 12, 12), "0.5B": (1024, 28, 16)}


def run_one(model_dir: Path, device: str, lora_r: int, steps: int, prompts: int, group: int, new_tokens: int) -> dict:
    """A short GRPO run; returns tokens/s, seconds per step and peak memory."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = GRPO(model_dir, task="add", digits=2, run_dir=run_dir, tensorboard=False, device=device,
                       dtype="bfloat16", lora_r=lora_r, lora_alpha=2.0 * max(lora_r, 1), steps=steps,
                       prompts_per_step=prompts, group_size=group, max_new_tokens=new_tokens, num_eval_prompts=8,
                       eval_every=0, max_prompt_tokens=64)
        started = time.perf_counter()
        summary = trainer.train()
        wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else None
    return {"lora_r": lora_r, "steps": steps, "gen_tokens_per_s": summary["gen_tokens_per_s"],
            "step_tokens_per_s": summary["step_tokens_per_s"], "seconds_per_step": wall / steps,
            "peak_gpu_mib": peak}


def main() -> None:
    """Run every shape x (LoRA, full) and print/write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=["0.1B", "0.5B"], choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompts-per-step", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {"device": args.device, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None, "runs": []}
    with tempfile.TemporaryDirectory() as root:
        for shape in args.shapes:
            hidden, layers, heads = SHAPES[shape]
            model_dir = make_model_dir(Path(root) / shape, task_texts(get_task("add", 2)), "llama", 512, hidden,
                                       layers, heads, max_positions=256)
            params = sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values())
            for lora_r in (16, 0):
                row = {"shape": shape, "parameters": params,
                       **run_one(model_dir, args.device, lora_r, args.steps, args.prompts_per_step,
                                 args.group_size, args.max_new_tokens)}
                print(json.dumps(row), flush=True)
                results["runs"].append(row)
                if args.out:  # written after every run: a timeout still leaves what finished
                    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
