"""Speed of one GRPO step, proximo vs TRL's GRPOTrainer, on the same tiny character GPT-2, the same
prompts, reward, group size, completion length and thread count, side by side in one run.

    .venv/bin/python benchmarks/llm.py --steps 10 --repeats 3
    .venv/bin/python benchmarks/llm.py --profile --steps 30     # proximo only: where a step's time goes

The figure is completion tokens per second of wall time over whole steps (generation + update),
counted by one shared reward wrapper; the ratio proximo / TRL is what counts (BENCHMARKS.md).
Writes benchmarks/results/llm_grpo_speed.json and .md. Needs TRL: `pip install -e .[bench-llm]`.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
THREADS_SEEN: dict[str, int] = {}  # torch threads each side actually ran with


def hf_char_tokenizer():
    """A transformers tokenizer with exactly proximo's CharTokenizer ids (pad 0, bos 1, eos 2, chars)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from proximo.llm.tokenizer import CharTokenizer
    char = CharTokenizer()
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for c in char.chars:
        vocab[c] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", padding_side="left")


class CountingReward:
    """Exact-match reward for 'a+b=' prompts that also counts completion tokens (characters + <eos>)."""

    __name__ = "exact_sum"

    def __init__(self) -> None:
        self.tokens = 0

    def __call__(self, prompts, completions, **_):
        """1.0 where the completion is the sum, else 0.0."""
        out = []
        for prompt, completion in zip(prompts, completions):
            self.tokens += len(completion) + 1
            left, right = prompt.rstrip("=").split("+")
            out.append(1.0 if completion.strip() == str(int(left) + int(right)) else 0.0)
        return out


def _proximo_grpo(model_dir: Path, prompts: list[str], args, reward):
    """proximo's GRPO trainer with the benchmark's settings (one update per generation, no KL)."""
    from proximo.llm import GRPO
    return GRPO(model_dir, reward_fn=reward, prompts=prompts, run_dir=Path(tempfile.mkdtemp()) / "p",
                tensorboard=False, group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                num_minibatches=1, n_epochs=1, max_new_tokens=args.max_new_tokens, kl_coef=0.0,
                learning_rate=1e-5, torch_threads=args.threads, num_eval_prompts=1, eval_every=0)


def run_proximo(model_dir: Path, prompts: list[str], args) -> float:
    """Completion tokens/s of proximo's GRPO over args.steps steps (after one warm-up step)."""
    reward = CountingReward()
    trainer = _proximo_grpo(model_dir, prompts, args, reward)
    optimizer = trainer.make_optimizer()

    def one_step() -> None:
        # What GRPO.train() does per step (count, update, log a metrics row), without its held-out
        # evaluations: TRL's timed steps likewise include its per-step bookkeeping and no evaluation.
        trainer.step_count += 1
        row = trainer.step(optimizer)
        trainer.run.log(trainer.step_count, row, row["gen_tokens_per_s"], row["reward"])

    one_step()
    THREADS_SEEN["proximo"] = torch.get_num_threads()
    reward.tokens = 0
    started = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    return reward.tokens / (time.perf_counter() - started)


def profile_proximo(model_dir: Path, prompts: list[str], args) -> dict[str, float]:
    """Milliseconds per step of each part of proximo's GRPO step (timers wrapped around the parts)."""
    import collections

    import proximo.llm.grpo as grpo_module
    import proximo.llm.rl as rl_module
    totals: dict[str, float] = collections.defaultdict(float)

    # Patched on the modules that call them; restored below so that later runs are untouched.
    patches = [(rl_module, "generate", "generation"), (rl_module, "encode_prompts", "encode/decode"),
               (rl_module, "decode_responses", "encode/decode"), (rl_module.RLTrainer, "score", "reward"),
               (grpo_module, "grpo_token_loss", "loss"),
               (grpo_module, "response_logprobs",
                lambda a, k: "training forward" if k.get("with_entropy") else "reference forward"),
               (torch.Tensor, "backward", "backward")]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    reward = CountingReward()
    trainer = _proximo_grpo(model_dir, prompts, args, reward)
    optimizer = trainer.make_optimizer()
    optimizer.step = timed(totals, "optimizer + clip", optimizer.step)
    optimizer.clip_grad_norm_ = timed(totals, "optimizer + clip", optimizer.clip_grad_norm_)
    try:
        for obj, name, label in patches:
            setattr(obj, name, timed(totals, label, getattr(obj, name)))
        for index in range(3 + args.steps):
            if index == 3:
                totals.clear()
                started = time.perf_counter()
            trainer.step_count += 1
            row = trainer.step(optimizer)
            trainer.run.log(trainer.step_count, row, row["gen_tokens_per_s"], row["reward"])
        elapsed = time.perf_counter() - started
    finally:
        for obj, name, original in originals:
            setattr(obj, name, original)
    out = {k: 1000 * v / args.steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    out["rest"] = 1000 * elapsed / args.steps - sum(out.values())
    out["step"] = 1000 * elapsed / args.steps
    return out


def run_trl(model_dir: Path, prompts: list[str], args) -> float:
    """Completion tokens/s of TRL's GRPOTrainer over args.steps steps (after one warm-up step)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    reward = CountingReward()
    batch = args.prompts_per_step * args.group_size
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step == 1:
                reward.tokens = 0
                marks["start"] = time.perf_counter()
                THREADS_SEEN["trl"] = torch.get_num_threads()
            marks["end"] = time.perf_counter()

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, max_steps=args.steps + 1, learning_rate=1e-5, beta=0.0,
        num_iterations=1, gradient_accumulation_steps=1, temperature=1.0, logging_steps=1000,
        save_strategy="no", report_to="none", use_cpu=True, disable_dropout=True, seed=1,
        gradient_checkpointing=False,
        dataloader_num_workers=0, bf16=False, fp16=False)
    dataset = Dataset.from_dict({"prompt": prompts * 64})
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=hf_char_tokenizer(), callbacks=[Clock()])
    trainer.train()
    return reward.tokens / (marks["end"] - marks["start"])


def main() -> None:
    """Alternate proximo and TRL runs, report the median tokens/s of each and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print proximo's per-part step time; no TRL run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from proximo.llm.models import build_builtin
    model_dir = Path(tempfile.mkdtemp()) / "tiny"
    tokenizer = hf_char_tokenizer()
    model = build_builtin("tiny", len(tokenizer), seed=0)
    model.save_pretrained(str(model_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(model_dir))
    rng = random.Random(0)
    prompts = [f"{rng.randrange(1000)}+{rng.randrange(1000)}=" for _ in range(256)]
    if args.profile:
        parts = profile_proximo(model_dir, prompts, args)
        print("\n".join(f"{name:20s} {ms:7.2f} ms/step" for name, ms in parts.items()))
        return
    figures: dict[str, list[float]] = {"proximo": [], "trl": []}
    for _ in range(args.repeats):
        figures["proximo"].append(run_proximo(model_dir, prompts, args))
        figures["trl"].append(run_trl(model_dir, prompts, args))
        print(json.dumps(figures), flush=True)
    medians = {k: statistics.median(v) for k, v in figures.items()}
    import trl
    result = {"machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
                         f"trl {trl.__version__}",
              "settings": {k: v for k, v in vars(args).items() if k != "profile"}, "tokens_per_s": figures, "median_tokens_per_s": medians,
              "ratio_proximo_over_trl": medians["proximo"] / medians["trl"], "threads_seen": THREADS_SEEN}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llm_grpo_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# GRPO step speed: proximo vs TRL GRPOTrainer (same tiny char GPT-2, same settings)", "",
          f"Machine: {result['machine']}. Settings: {json.dumps(result['settings'])}", "",
          "| side | completion tokens/s (median of runs) | runs |", "|---|---|---|"]
    for side in ("proximo", "trl"):
        md.append(f"| {side} | {medians[side]:,.0f} | {', '.join(f'{v:,.0f}' for v in figures[side])} |")
    md += ["", f"Ratio proximo / TRL: {result['ratio_proximo_over_trl']:.2f}x (torch threads seen: {THREADS_SEEN})"]
    (RESULTS / "llm_grpo_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
