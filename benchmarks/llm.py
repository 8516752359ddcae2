"""Speed and memory of GRPO steps, proximo vs TRL's GRPOTrainer, on the same model directory, the same
prompts, reward, group size, completion length and thread count, side by side in one run.

    .venv/bin/python benchmarks/llm.py --steps 10 --repeats 3
    .venv/bin/python benchmarks/llm.py --model bpe-llama --steps 10 --repeats 3
    .venv/bin/python benchmarks/llm.py --model bpe-llama --lora-r 8 --steps 10 --repeats 3
    .venv/bin/python benchmarks/llm.py --profile --steps 30     # proximo only: where a step's time goes

--model tiny is proximo's built-in character GPT-2 with a transformers tokenizer of the same ids and
plain-text prompts; --model bpe-llama is a tiny Llama with a byte-level BPE tokenizer and a chat
template (proximo.llm.modeldir), given chat prompts, which each side renders through the template.
--lora-r R trains a LoRA adapter on both sides (TRL: a peft LoraConfig; proximo: lora_r) of the same
rank, alpha and target modules (peft's default for the model family).

Each run of a side is its own child process, alternating proximo, TRL, proximo, TRL, ...; the figure is
completion tokens per second of wall time over whole steps (generation + update) after one warm-up
step, counting the tokens each side actually generated (eos included): proximo's from the rollouts its
trainer trains on (a counting wrapper of the sampler it is given, the one path every rollout takes), TRL's
from the completion_ids it hands its reward functions. A side that counts no tokens or completions stops
the benchmark with an error (a wrapper off the trainer's path once printed proximo at 0 tokens/s). Memory
is the child's peak RSS (its rusage from wait4) and that peak over the RSS right after the model was
loaded. The ratio proximo / TRL is what counts (BENCHMARKS.md).
Writes benchmarks/results/llm_grpo_speed[_<model>][_lora<R>].json and .md. Needs TRL:
`pip install -e .[bench-llm]`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parameter_count, require_counted, timed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
THREADS_SEEN: dict[str, int] = {}  # torch threads each side actually ran with
MODELS = ("tiny", "bpe-llama", "llama-100m")
# (hidden, layers, heads) of the Llama shapes built from a config (4x MLP, a 512-token BPE vocabulary).
LLAMA_SHAPES = {"bpe-llama": (128, 3, 4), "llama-100m": (768, 12, 12)}
SIDES = ("proximo", "trl")


def rss_mib() -> float:
    """This process's resident set size now, in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def lora_targets(model_dir: Path) -> list[str]:
    """peft's default LoRA target modules for the model's family: what proximo uses when none are named."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
    family = json.loads((Path(model_dir) / "config.json").read_text())["model_type"]
    return list(DEFAULTS[family])


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


def _text(value) -> str:
    """A prompt or completion as text: a string as is, chat messages as the last message's content."""
    return value if isinstance(value, str) else value[-1]["content"]


class CountingReward:
    """Exact-match reward for 'a+b=' prompts (plain or chat) that also counts the completions it scored
    and, when the trainer passes them (TRL's completion_ids), the tokens generated."""

    __name__ = "exact_sum"

    def __init__(self) -> None:
        self.tokens = 0
        self.completions = 0

    def __call__(self, prompts, completions, completion_ids=None, **_):
        """1.0 where the completion is the sum, else 0.0."""
        out = []
        if completion_ids is not None:
            self.tokens += sum(len(ids) for ids in completion_ids)
        for prompt, completion in zip(prompts, completions):
            self.completions += 1
            left, right = _text(prompt).rstrip("=").split("+")
            out.append(1.0 if _text(completion).strip() == str(int(left) + int(right)) else 0.0)
        return out


def counting_sampler():
    """proximo's built-in sampler, counting the completion tokens (eos included) and completions of every
    rollout it returns: the rollouts the trainer trains on (GRPO takes it as sampler=)."""
    from proximo.llm.generation import KVCacheSampler

    class CountingSampler(KVCacheSampler):
        tokens = completions = 0

        def generate(self, *args, **kwargs):
            rollout = super().generate(*args, **kwargs)
            self.tokens += int(rollout.response_mask.sum())
            self.completions += int(rollout.response_mask.shape[0])
            return rollout
    return CountingSampler()


def _proximo_grpo(model_dir: Path, prompts: list, args, reward, sampler=None):
    """proximo's GRPO trainer with the benchmark's settings (one update per generation, no KL)."""
    from proximo.llm import GRPO
    lora = (dict(lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_target=",".join(lora_targets(model_dir)))
            if args.lora_r else {})
    # Plain strings go in as prompts=; chat prompts as a dataset, rendered by the tokenizer's template.
    source = dict(prompts=prompts) if isinstance(prompts[0], str) else dict(dataset=[{"prompt": p} for p in prompts])
    return GRPO(model_dir, reward_fn=reward, run_dir=Path(tempfile.mkdtemp()) / "p",
                tensorboard=False, group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                num_minibatches=1, n_epochs=1, max_new_tokens=args.max_new_tokens, kl_coef=0.0,
                learning_rate=1e-5, torch_threads=args.threads, num_eval_prompts=1, eval_every=0,
                sampler=sampler, **source, **lora, **_precision(args))


def _precision(args) -> dict:
    """proximo's dtype and gradient-checkpointing fields for the benchmark's --dtype and
    --gradient-checkpointing."""
    return dict(dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing)


def run_proximo(model_dir: Path, prompts: list, args) -> dict:
    """Completion tokens/s of proximo's GRPO over args.steps steps (after one warm-up step), the tokens
    and completions counted, and the RSS right after the model was loaded."""
    import proximo.llm.rl as rl_module
    reward = CountingReward()
    sampler = counting_sampler()
    counted = {"rss_after_load_mib": None}
    load_model = rl_module.load_model

    # Wrapped where rl.py calls it, to read the RSS at the same point as TRL's side: weights just loaded.
    def measured_load(*a, **k):
        out = load_model(*a, **k)
        counted["rss_after_load_mib"] = rss_mib()
        return out

    rl_module.load_model = measured_load
    trainer = _proximo_grpo(model_dir, prompts, args, reward, sampler)
    require_counted("model load (the RSS probe is off rl.py's path)", counted["rss_after_load_mib"] or 0)
    optimizer = trainer.make_optimizer()

    def one_step() -> None:
        # What GRPO.train() does per step (count, update, log a metrics row), without its held-out
        # evaluations: TRL's timed steps likewise include its per-step bookkeeping and no evaluation.
        trainer.step_count += 1
        row = trainer.step(optimizer)
        trainer.run.log(trainer.step_count, row, row["gen_tokens_per_s"], row["reward"])

    one_step()
    THREADS_SEEN["proximo"] = torch.get_num_threads()
    sampler.tokens, sampler.completions, reward.completions = 0, 0, 0
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        one_step()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    # Every rollout the trainer sampled was scored: the two counts of completions must agree.
    if sampler.completions != reward.completions:
        raise SystemExit(f"proximo sampled {sampler.completions} completions but scored {reward.completions}")
    return {"tokens_per_s": sampler.tokens / seconds, "tokens_per_cpu_s": sampler.tokens / cpu,
            "tokens": sampler.tokens, "completions": sampler.completions, "seconds": seconds, "cpu_s": cpu,
            "rss_after_load_mib": counted["rss_after_load_mib"]}


def profile_proximo(model_dir: Path, prompts: list[str], args) -> dict[str, float]:
    """Milliseconds per step of each part of proximo's GRPO step (timers wrapped around the parts)."""
    import collections

    import proximo.llm.grpo as grpo_module
    import proximo.llm.rl as rl_module
    totals: dict[str, float] = collections.defaultdict(float)

    # Patched on the objects whose methods the trainer calls; restored below so that later runs are untouched.
    sampler = counting_sampler()
    patches = [(sampler, "generate", "generation"), (rl_module, "prompt_token_ids", "encode/decode"),
               (rl_module, "decode_responses", "encode/decode"), (rl_module.RLTrainer, "score", "reward"),
               (grpo_module, "grpo_token_loss", "loss"),
               (grpo_module, "response_logprobs",
                lambda a, k: "training forward" if k.get("with_entropy") else "reference forward"),
               (torch.Tensor, "backward", "backward")]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    reward = CountingReward()
    trainer = _proximo_grpo(model_dir, prompts, args, reward, sampler)
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
    for part in ("generation", "encode/decode", "reward", "training forward", "backward"):
        require_counted(f"time in {part} (its timer is off the trainer's path)", totals.get(part, 0.0))
    out = {k: 1000 * v / args.steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    out["rest"] = 1000 * elapsed / args.steps - sum(out.values())
    out["step"] = 1000 * elapsed / args.steps
    return out


def run_trl(model_dir: Path, prompts: list, args) -> dict:
    """Completion tokens/s of TRL's GRPOTrainer over args.steps steps (after one warm-up step), the tokens
    and completions counted, and the RSS right after the model was loaded."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    reward = CountingReward()
    batch = args.prompts_per_step * args.group_size
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step == 1:
                reward.tokens, reward.completions = 0, 0
                marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()
                THREADS_SEEN["trl"] = torch.get_num_threads()
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

    low = args.dtype == "bfloat16"
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, max_steps=args.steps + 1, learning_rate=1e-5, beta=0.0,
        num_iterations=1, gradient_accumulation_steps=1, temperature=1.0, logging_steps=1000,
        save_strategy="no", report_to="none", use_cpu=True, disable_dropout=True, seed=1,
        gradient_checkpointing=args.gradient_checkpointing,
        dataloader_num_workers=0, bf16=low, fp16=False)
    dataset = Dataset.from_dict({"prompt": prompts * 64})
    # bf16: the weights loaded in bf16 (peft keeps its adapter in float32), as proximo stores frozen weights
    # in bf16 and trains float32 adapters; autocast on both sides.
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True,
                                                 **({"dtype": torch.bfloat16} if low else {}))
    rss_after_load = rss_mib()
    if args.model == "tiny":
        tokenizer = hf_char_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    peft_config = None
    if args.lora_r:
        from peft import LoraConfig
        # What proximo's LoRA builds: same rank, alpha and targets, no dropout, no bias terms.
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=lora_targets(model_dir),
                                 lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()], peft_config=peft_config)
    trainer.train()
    seconds, cpu = marks["end"] - marks["start"], marks["cpu_end"] - marks["cpu_start"]
    return {"tokens_per_s": reward.tokens / seconds, "tokens_per_cpu_s": reward.tokens / cpu, "tokens": reward.tokens,
            "completions": reward.completions, "seconds": seconds, "cpu_s": cpu, "rss_after_load_mib": rss_after_load}


def prompt_token_counts(model_dir: Path, prompts: list, args) -> dict[str, int]:
    """Token count of the first prompt as each side encodes it (they must agree for a fair race)."""
    from proximo.llm.data import render_prompt
    from proximo.llm.tokenizer import load_tokenizer
    mine = load_tokenizer(model_dir)
    ours = len(mine.encode(render_prompt(prompts[0], mine), add_bos=True))
    if isinstance(prompts[0], str):
        # TRL tokenizes a plain prompt as is (this tokenizer adds no special tokens).
        theirs = len(hf_char_tokenizer()(prompts[0])["input_ids"])
    else:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        encoded = tok.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=True)
        theirs = len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    return {"proximo": ours, "trl": theirs}


def make_bench_model(args, directory: Path) -> tuple[Path, list]:
    """The model directory both sides load and the prompts both are given."""
    rng = random.Random(0)
    if args.model == "tiny":
        from proximo.llm.models import build_builtin
        model_dir = directory / "tiny"
        tokenizer = hf_char_tokenizer()
        model = build_builtin("tiny", len(tokenizer), seed=0)
        model.save_pretrained(str(model_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(model_dir))
        return model_dir, [f"{rng.randrange(1000)}+{rng.randrange(1000)}=" for _ in range(256)]
    from proximo.llm.modeldir import make_model_dir, task_texts
    from proximo.llm.tasks import get_task
    task = get_task("add", 2)  # the model llm_dataset_grpo.py --model bpe-llama trains: same task, same shape
    hidden, layers, heads = LLAMA_SHAPES[args.model]
    model_dir = make_model_dir(directory / args.model, task_texts(task, 4000), family="llama", hidden=hidden,
                               layers=layers, heads=heads, max_positions=256, seed=0)
    return model_dir, [[{"role": "user", "content": p}] for p in task.sample_prompts(rng, 256)]


def child_argv(args, side: str, model_dir: Path, prompts_file: Path, result_file: Path) -> list[str]:
    """The command line of one side's child process: this script with the parent's settings."""
    return [sys.executable, str(Path(__file__).resolve()), "--child", side, "--model", args.model,
            "--model-dir", str(model_dir), "--prompts-file", str(prompts_file), "--result-file", str(result_file),
            "--steps", str(args.steps), "--prompts-per-step", str(args.prompts_per_step),
            "--group-size", str(args.group_size), "--max-new-tokens", str(args.max_new_tokens),
            "--threads", str(args.threads), "--lora-r", str(args.lora_r), "--lora-alpha", str(args.lora_alpha),
            "--dtype", args.dtype, *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])]


def run_child(args, side: str, model_dir: Path, prompts_file: Path) -> dict:
    """One side's run in its own process; its figures plus its peak RSS from the kernel (wait4)."""
    result_file = Path(tempfile.mkdtemp()) / "result.json"
    process = subprocess.Popen(child_argv(args, side, model_dir, prompts_file, result_file))
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"the {side} child failed with exit status {process.returncode}")
    result = json.loads(result_file.read_text())
    require_counted(f"completion tokens on the {side} side", result["tokens"])
    require_counted(f"completions on the {side} side", result["completions"])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    result["peak_over_load_mib"] = result["peak_rss_mib"] - result["rss_after_load_mib"]
    return result


def _rate(value: float) -> str:
    """A rate with enough digits to read: 1,234 or 2.98."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown(result: dict) -> list[str]:
    """The results file's lines for a result dict (as written to the JSON)."""
    settings, runs, summary = result["settings"], result["runs"], result["median"]
    model, lora_r = settings["model"], settings["lora_r"]
    what = {"tiny": "tiny char GPT-2", "bpe-llama": "tiny Llama + BPE tokenizer with a chat template",
            "llama-100m": "Llama of 0.11B parameters (hidden 768, 12 layers, 12 heads, 512-token BPE vocabulary) "
                          "built from a config"}[model]
    if settings.get("dtype") == "bfloat16":
        what += ", bf16"
    if settings.get("gradient_checkpointing"):
        what += ", gradient checkpointing"
    what += f", LoRA r={lora_r} alpha={settings['lora_alpha']:g} on {'/'.join(settings['lora_targets'])}" \
        if lora_r else ", full fine-tuning"
    md = [f"# GRPO step speed and memory: proximo vs TRL GRPOTrainer ({what}; same settings)", "",
          f"Machine: {result['machine']}. Model: {result['parameters']:,} parameters. "
          f"Settings: {json.dumps(settings)}", "",
          f"Command: `{result['command']}`", ""]
    if result.get("provisional"):
        md += ["**Provisional**: taken while other jobs shared this machine's cores; the ratios are indicative, "
               "the absolute rates low. Rerun the command above without --provisional on a quiet machine for the "
               "figures to quote.", ""]
    md += [
          "| side | completion tokens/s (median) | runs (tokens/s, in order A B A B) | tokens per CPU s (median) | "
          "tokens per completion | peak RSS MiB | RSS after model load MiB | peak over load MiB |",
          "|---|---|---|---|---|---|---|---|"]
    for side in SIDES:
        m = summary[side]
        each = ", ".join(_rate(r["tokens_per_s"]) for r in runs[side])
        md.append(f"| {side} | {_rate(m['tokens_per_s'])} | {each} | {_rate(m['tokens_per_cpu_s'])} | "
                  f"{m['tokens_per_completion']:.2f} | {m['peak_rss_mib']:.0f} | {m['rss_after_load_mib']:.0f} | "
                  f"{m['peak_over_load_mib']:.0f} |")
    md += ["", f"Ratio proximo / TRL: {result['ratio_proximo_over_trl']:.2f}x in completion tokens per wall second, "
           f"{result['ratio_per_cpu_s_proximo_over_trl']:.2f}x per CPU second of the child (the steadier figure when "
           f"the machine is shared: other jobs' load stretches wall time, not CPU time). Torch threads "
           f"seen: {result['threads_seen']}. Prompt tokens of the first prompt on each side: "
           f"{result['prompt_tokens']}.", "",
           "Each run is one child process (model load, one warm-up step, then the timed steps); memory figures are "
           "medians over runs of the child's peak RSS (kernel rusage) and of that peak minus the RSS right after "
           "the model was loaded (imports included in both). Tokens are those each side actually generated, "
           "eos included (proximo: the response masks of the rollouts its sampler handed the trainer; TRL: the "
           "completion_ids given to the reward); a side that counted none stops the benchmark."]
    if result.get("profile"):
        profile = result["profile"]
        md += ["", f"Where proximo's step goes (`{profile['command']}`, ms per step; timers around the parts the "
                   "trainer calls):", "", "| part | ms/step |", "|---|---|"]
        md += [f"| {part} | {ms:,.0f} |" for part, ms in profile["ms_per_step"].items()]
        if profile.get("note"):
            md += ["", profile["note"] + "."]
    return md


def main() -> None:
    """Alternate proximo and TRL runs (each in a child process), report the median tokens/s and memory of
    each and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="tiny")
    parser.add_argument("--lora-r", type=int, default=0, help="both sides train a LoRA adapter of this rank")
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: autocast passes and frozen weights in bf16 on both sides")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    parser.add_argument("--profile", action="store_true", help="print proximo's per-part step time; no TRL run")
    parser.add_argument("--out", default=None, help="results file stem (default from --model and --lora-r)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="rewrite the markdown of an existing results JSON (no run)")
    parser.add_argument("--provisional", action="store_true",
                        help="say in the results that the machine was shared while they were taken")
    # Internal: how the parent starts one side's run in a child process.
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text("\n".join(markdown(json.loads(args.render.read_text()))) + "\n")
        return
    torch.set_num_threads(args.threads)
    if args.child:
        prompts = json.loads(args.prompts_file.read_text())
        result = (run_proximo if args.child == "proximo" else run_trl)(args.model_dir, prompts, args)
        result["threads"] = THREADS_SEEN.get(args.child)
        args.result_file.write_text(json.dumps(result))
        return
    model_dir, prompts = make_bench_model(args, Path(tempfile.mkdtemp()))
    if args.profile:
        parts = profile_proximo(model_dir, prompts, args)
        print("\n".join(f"{name:20s} {ms:7.2f} ms/step" for name, ms in parts.items()))
        return
    prompts_file = model_dir.parent / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(args.repeats):
        for side in SIDES:  # A B A B: slow drifts of a shared machine's load hit both sides alike
            runs[side].append(run_child(args, side, model_dir, prompts_file))
            print(side, json.dumps(runs[side][-1]), flush=True)
    median = lambda side, key: statistics.median(r[key] for r in runs[side])  # noqa: E731
    summary = {side: {key: median(side, key) for key in ("tokens_per_s", "tokens_per_cpu_s", "peak_rss_mib", "rss_after_load_mib",
                                                         "peak_over_load_mib")} for side in SIDES}
    for side in SIDES:
        summary[side]["tokens_per_completion"] = (sum(r["tokens"] for r in runs[side])
                                                  / sum(r["completions"] for r in runs[side]))
    import trl
    settings = {k: v for k, v in vars(args).items()
                if k not in ("profile", "child", "model_dir", "prompts_file", "result_file", "out", "render")}
    if args.lora_r:
        settings["lora_targets"] = lora_targets(model_dir)
    stem = args.out or "llm_grpo_speed" + ("" if args.model == "tiny" else "_" + args.model.replace("-", "_")) + (
        f"_lora{args.lora_r}" if args.lora_r else "") + ("_bf16" if args.dtype == "bfloat16" else "") + (
        "_gc" if args.gradient_checkpointing else "")
    from common import cpu_model
    result = {"machine": f"{platform.machine()} ({cpu_model()}, {os.cpu_count()} cores), torch {torch.__version__}, "
                         f"{args.threads} thread(s), trl {trl.__version__}",
              "provisional": args.provisional, "parameters": parameter_count(model_dir),
              "command": "python benchmarks/llm.py " + shlex.join(sys.argv[1:]),
              "settings": settings, "prompt_tokens": prompt_token_counts(model_dir, prompts, args),
              "runs": runs, "median": summary,
              "tokens_per_s": {side: [r["tokens_per_s"] for r in runs[side]] for side in SIDES},
              "median_tokens_per_s": {side: summary[side]["tokens_per_s"] for side in SIDES},
              "ratio_proximo_over_trl": summary["proximo"]["tokens_per_s"] / summary["trl"]["tokens_per_s"],
              "ratio_per_cpu_s_proximo_over_trl": (summary["proximo"]["tokens_per_cpu_s"]
                                                   / summary["trl"]["tokens_per_cpu_s"]),
              "threads_seen": {side: sorted({r["threads"] for r in runs[side]}) for side in SIDES}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
