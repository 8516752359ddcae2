"""GRPO with generation overlapped with training (async_generation) against the same run without it, on the
same 2 cores: generated tokens per wall second, wall time and held-out accuracy at the end, per seed.

    .venv/bin/python benchmarks/llm_async.py --seeds 1 2 3
    .venv/bin/python benchmarks/llm_async.py --quick          # a ~1-minute smoke of every path; results in --root

Two workloads, each run sync and async from one warm start per seed:
- `add` (the built-in task, 3-digit operands, built-in tiny char model): SFT from scratch to sampled accuracy
  --sft-target (as benchmarks/llm_add.py), then --add-steps GRPO steps (32 prompts x 8, 2 minibatches);
- a dataset run (as benchmarks/llm_dataset_grpo.py: JSONL chat prompts, the user reward module, held-out JSONL;
  its shared warm start), --dataset-steps GRPO steps (16 prompts x 8, 2 minibatches, dapo).

Both sides get the machine's 2 cores: the sync run with torch_threads 2 (one process), the async run with
torch_threads 1, which is 1 thread in the learner and 1 in the generator process. A third run, sync1, is the
sync run on 1 thread (a control: on a model this small a second torch thread may cost more than it gives). Tokens/s counts the
completion tokens of steps 2..N over the wall seconds from the end of step 1 to the end of step N (step 1
holds the generator's start; the evaluations before step 1 and after step N are outside); wall is the
whole GRPO run's (summary wall_time_s, evaluations included). Held-out accuracy is sampled (temperature 1)
and greedy exact match after the last step. The forkserver (imports once per process) is started before the
runs, so that no async run's wall time holds it (a user pays it once per process, behind the evaluation
before step 1).

TRL: its asynchronous GRPO (trl.experimental.async_grpo, TRL 1.16) generates only through a vLLM server, and
vLLM is not installed here (nor would it run on this CPU-only machine), so there is no TRL async side. TRL's
synchronous GRPOTrainer against proximo's sync GRPO at a matching setting is benchmarks/llm.py's table
(benchmarks/results/llm_grpo_speed*.md).

Writes benchmarks/results/llm_async.json and .md (with --quick: llm_async_quick.* under --root).
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llm_dataset_grpo as dataset_bench  # noqa: E402
from common import require_counted, summary_speeds  # noqa: E402
from proximo.llm import GRPO, SFT  # noqa: E402
from proximo.llm.tasks import get_task  # noqa: E402

RESULTS = HERE / "results"
MODES = ("sync", "async", "async_s", "async_s2", "sync1")
# async: 1 learner thread + 1 generator thread. async_s: the same with old_logprobs sampler (the ratio against
# the generator's own log-probs: no recompute pass in the learner). async_s2: async_s with 2 learner threads
# beside the 1 generator thread (the generator idles while it waits for the learner's weights, so the learner
# may use the second core then). sync1 (a control): the sync run on one thread, to tell the overlap's gain from
# the cost of a second torch thread on a model this small.
THREADS = {"sync": 2, "async": 1, "async_s": 1, "async_s2": 2, "sync1": 1}


def mode_settings(mode: str) -> dict:
    """The GRPO settings that make a mode: its threads, async generation and where the old log-probs come from."""
    settings = {"torch_threads": THREADS[mode], "async_generation": mode.startswith("async"),
                "old_logprobs": "sampler" if mode.startswith("async_s") else "auto"}
    if mode.startswith("async"):
        settings["generator_threads"] = 1
    return settings


def nan_median(values) -> float:
    """The median of the finite values (nan when none: old_logprobs sampler does not measure offpolicy/kl)."""
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def warm_forkserver() -> float:
    """Start multiprocessing's forkserver (it imports torch and transformers once per process) with one
    throwaway generator, so that no async run's wall time holds it; returns its seconds."""
    from proximo.llm.async_sampler import AsyncProcessSampler
    from proximo.llm.generation import pad_prompts
    from proximo.llm.models import load_model
    started = time.perf_counter()
    model, tokenizer, _ = load_model("tiny", seed=0)
    sampler = AsyncProcessSampler(seed=0)
    ids, mask = pad_prompts([tokenizer.encode("1+1=", add_bos=True)], tokenizer.pad_id)
    sampler.generate(model, ids, mask, 2, tokenizer.stop_ids, tokenizer.pad_id)
    sampler.close()
    return time.perf_counter() - started


def loop_tokens_per_s(history: list[dict], completions_per_step: int) -> float:
    """Completion tokens of steps 2..N per wall second between the ends of step 1 and step N."""
    if len(history) < 2:
        raise SystemExit("tokens/s needs at least 2 GRPO steps")
    tokens = sum(row["response_length"] * completions_per_step for row in history[1:])
    return require_counted("tokens (completion tokens of steps 2..N)",
                           tokens / (history[-1]["time_s"] - history[0]["time_s"]))


def grpo_figures(trainer: GRPO, summary: dict, mode: str, completions_per_step: int) -> dict:
    """The measured figures of one GRPO run."""
    summary_speeds(summary)  # a run that counted no tokens measured nothing: stop
    after = summary["after"]
    return {"mode": mode, "torch_threads": THREADS[mode], "steps": summary["steps"],
            "tokens_per_s": loop_tokens_per_s(trainer.history, completions_per_step),
            "wall_s": summary["wall_time_s"],
            "sampled_after": after["eval_sampled_accuracy"], "greedy_after": after["eval_greedy_accuracy"],
            "sampled_before": summary["before"]["eval_sampled_accuracy"],
            "version_lag_mean": statistics.mean(r.get("offpolicy/version_lag", 0.0) for r in trainer.history),
            "offpolicy_kl_median": nan_median(r["offpolicy/kl"] for r in trainer.history),
            "stale_frac_max": max(r["offpolicy/stale_frac"] for r in trainer.history)}


def add_seed(seed: int, args, root: Path) -> list[dict]:
    """SFT warm start on `add`, then GRPO sync and async from it."""
    sft_dir = root / f"add-sft-s{seed}"
    if not (sft_dir / "summary.json").is_file():  # deterministic per seed: reused when it is there (1 thread, as
        # llm_add.py: setup, not measured)
        SFT("tiny", run_dir=sft_dir, seed=seed, task="add", digits=args.digits, target_accuracy=args.sft_target,
            eval_every=args.sft_eval_every, max_steps=args.sft_max_steps, tensorboard=False, torch_threads=1,
            num_eval_prompts=args.eval_prompts).train()
    rows = []
    for mode in args.modes:
        trainer = GRPO(sft_dir, run_dir=root / f"add-{mode}-s{seed}", seed=seed, task="add", digits=args.digits,
                       steps=args.add_steps, learning_rate=5e-5, group_size=8, prompts_per_step=args.add_prompts,
                       num_minibatches=2, loss_aggregation="bnpo", eval_every=0,
                       num_eval_prompts=args.eval_prompts, tensorboard=False, **mode_settings(mode))
        summary = trainer.train()
        rows.append({"workload": "add", "seed": seed, **grpo_figures(trainer, summary, mode, args.add_prompts * 8)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def dataset_seeds(args, root: Path) -> list[dict]:
    """benchmarks/llm_dataset_grpo.py's data and shared warm start, then GRPO sync and async per seed."""
    task = get_task("add", 2)
    train_path, eval_path = dataset_bench.write_data(task, root, args.train_rows, args.eval_prompts)
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    warm_dir = root / "dataset-warm-s0"
    if not (warm_dir / "warm_start.json").is_file():
        warm_args = argparse.Namespace(sft_lr=1e-3, sft_max_steps=args.dataset_sft_max_steps, sft_batch=128,
                                       sft_eval_every=args.sft_eval_every, sft_target=args.dataset_sft_target)
        torch.set_num_threads(1)  # setup, not measured: one thread, as llm_dataset_grpo.py
        dataset_bench.warm_start(0, task, read(train_path), read(eval_path)[:100], warm_args, warm_dir, "tiny")
    rows = []
    for seed in args.seeds:
        for mode in args.modes:
            trainer = GRPO(warm_dir, reward_fn=f"{dataset_bench.REWARD}:correct_sum", dataset=train_path,
                           eval_dataset=eval_path, run_dir=root / f"dataset-{mode}-s{seed}", seed=seed,
                           steps=args.dataset_steps, learning_rate=1e-4, group_size=8,
                           prompts_per_step=args.dataset_prompts, num_minibatches=2, loss_aggregation="dapo",
                           scale_rewards="group", max_new_tokens=task.max_new_tokens, eval_every=0,
                           num_eval_prompts=args.eval_prompts, tensorboard=False, **mode_settings(mode))
            summary = trainer.train()
            rows.append({"workload": "dataset", "seed": seed,
                         **grpo_figures(trainer, summary, mode, args.dataset_prompts * 8)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(result: dict) -> str:
    """Per-run rows, then per workload the seed means and the async/sync throughput ratio."""
    lines = ["# GRPO with generation overlapped with training (async) vs without (sync), same 2 cores", "",
             f"Machine: {result['machine']}. Command: `{result['command']}`", "",
             "sync: one process, torch_threads 2. async: torch_threads 1 = 1 thread in the learner + 1 in the "
             "generator process (one update behind the learner); async_s: async with old_logprobs sampler (the "
             "ratio against the generator's log-probs, no recompute pass). sync1: the sync run on 1 thread (a "
             "control); async_s2: async_s with 2 learner threads beside the generator's 1. tokens/s: completion tokens of steps 2..N per "
             "wall second between the ends of step 1 and step N; wall: the whole GRPO run, evaluations included; "
             "accuracy: held-out exact match after the last step. The forkserver the generators are forked from was "
             f"started once before the runs ({result['forkserver_start_s']:.1f} s; a user's first async run in a "
             "process pays it, hidden behind the evaluation before step 1).", "",
             "| workload | seed | mode | steps | tokens/s | wall s | sampled acc | greedy acc | mean version lag "
             "| median offpolicy/kl |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['workload']} | {r['seed']} | {r['mode']} | {r['steps']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['wall_s']:.0f} | {r['sampled_after']:.3f} | {r['greedy_after']:.3f} | "
                     f"{r['version_lag_mean']:.2f} | {r['offpolicy_kl_median']:.2e} |")
    lines += ["", "| workload | mode | tokens/s (mean) | wall s (mean) | sampled acc (mean) | greedy acc (mean) |",
              "|---|---|---|---|---|---|"]
    for workload, modes in result["means"].items():
        for mode, m in modes.items():
            lines.append(f"| {workload} | {mode} | {m['tokens_per_s']:,.0f} | {m['wall_s']:.0f} | "
                         f"{m['sampled_after']:.3f} | {m['greedy_after']:.3f} |")
    lines.append("")
    for workload, ratio in result["async_over_sync_tokens_per_s"].items():
        for name in [m for m in ("async", "async_s", "async_s2") if f"{m}/sync" in ratio]:
            lines.append(f"{workload}: tokens/s {name} / sync (2 threads) = {ratio[f'{name}/sync']:.2f}x, {name} / "
                         f"sync1 (1 thread) = {ratio[f'{name}/sync1']:.2f}x (ratios of seed means).")
    lines += ["", result["trl"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse flags, run both workloads, write JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke: 1 seed, a few steps, tiny evals")
    parser.add_argument("--digits", type=int, default=3)
    parser.add_argument("--sft-target", type=float, default=0.3)
    parser.add_argument("--sft-eval-every", type=int, default=25)
    parser.add_argument("--sft-max-steps", type=int, default=3000)
    parser.add_argument("--add-steps", type=int, default=1000)
    parser.add_argument("--add-prompts", type=int, default=32)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--dataset-sft-target", type=float, default=0.15)
    parser.add_argument("--dataset-sft-max-steps", type=int, default=1500)
    parser.add_argument("--dataset-steps", type=int, default=200)
    parser.add_argument("--dataset-prompts", type=int, default=16)
    parser.add_argument("--eval-prompts", type=int, default=500)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="the runs per seed and workload (the ratios need sync, sync1 and an async mode)")
    parser.add_argument("--root", type=Path, default=Path("runs/bench-llm-async"))
    parser.add_argument("--out", default=None, help="results file stem (default llm_async; --quick: under --root)")
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
        args.digits, args.sft_target, args.sft_max_steps, args.sft_eval_every = 2, 1.0, 10, 10
        args.add_steps, args.add_prompts, args.dataset_steps, args.dataset_prompts = 4, 8, 4, 8
        args.train_rows, args.eval_prompts, args.dataset_sft_max_steps, args.dataset_sft_target = 200, 16, 10, 1.0
    args.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    forkserver_s = warm_forkserver()
    runs = []
    for seed in args.seeds:
        runs += add_seed(seed, args, args.root)
    runs += dataset_seeds(args, args.root)
    means, ratios = {}, {}
    for workload in ("add", "dataset"):
        means[workload] = {mode: {key: statistics.mean(r[key] for r in runs if r["workload"] == workload
                                                       and r["mode"] == mode)
                                  for key in ("tokens_per_s", "wall_s", "sampled_after", "greedy_after")}
                           for mode in args.modes}
        ratios[workload] = {f"{mode}/{base}": means[workload][mode]["tokens_per_s"]
                            / means[workload][base]["tokens_per_s"] for mode in ("async", "async_s", "async_s2")
                            for base in ("sync", "sync1") if mode in args.modes and base in args.modes}
    result = {"machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} torch "
                         "threads at the end",
              "command": "python benchmarks/llm_async.py " + shlex.join(sys.argv[1:]),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": runs, "means": means, "async_over_sync_tokens_per_s": ratios,
              "total_wall_s": round(time.perf_counter() - started, 1),
              "forkserver_start_s": round(forkserver_s, 1),
              "trl": "TRL: no side here. TRL 1.16's asynchronous GRPO (trl.experimental.async_grpo) generates "
                     "through a vLLM server only, which is not installed and does not run on this CPU-only "
                     "machine; TRL's synchronous GRPOTrainer is measured against proximo's sync GRPO by "
                     "benchmarks/llm.py (benchmarks/results/llm_grpo_speed*.md)."}
    out_dir = args.root if args.quick else RESULTS
    stem = args.out or ("llm_async_quick" if args.quick else "llm_async")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(to_markdown(result))
    print(f"wrote {out_dir / stem}.json and .md in {result['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
