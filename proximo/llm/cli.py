"""`proximo llm sft | rm | rlhf | grpo | eval`: the language-model commands."""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proximo.checkpoint import load_json
from proximo.distributed import launch_local, launched_by_torchrun
from proximo.errors import EchoedError, ProximoError
from proximo.fielddoc import help_line
from proximo.flags import ArgumentParser, _is_nproc_token, _parser_for
from proximo.llm.config import GRPOConfig, RewardModelConfig, RLHFConfig, SFTConfig
from proximo.llm.data import PromptDataset, _read_rows, render_prompt
from proximo.llm.grpo import GRPO, check_async_generation
from proximo.llm.modeldir import make_model_dir, task_texts
from proximo.llm.models import BUILTIN_MODELS, load_model
from proximo.llm.multiturn import ToolEnvironment, episode_sampler, load_tools
from proximo.llm.reward_model import RewardModelTrainer
from proximo.llm.rewards import RewardSet, score_samples
from proximo.llm.rl import split_prompts
from proximo.llm.rlhf import RLHF
from proximo.llm.run import default_run_dir, evaluate
from proximo.llm.sft import SFT
from proximo.llm.tasks import get_task
from proximo.llm.trainer import resume_checkpoint


# TRL's names for the same settings: num_iterations passes over each generation batch, each split into
# steps_per_generation optimizer steps.
FIELD_ALIASES = {"n_epochs": ("--num-iterations",), "num_minibatches": ("--steps-per-generation",)}


def _add_fields(parser: argparse.ArgumentParser, config_cls) -> None:
    """One --dashed-flag per config field, unset by default so the dataclass defaults apply."""
    group = parser.add_argument_group(f"{config_cls.__name__} fields")
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        # A bool flag alone means true (--async-generation); --flag true|false still reads as before.
        alone = dict(nargs="?", const=True) if hints[field.name] is bool else {}
        group.add_argument(f"--{field.name.replace('_', '-')}", *FIELD_ALIASES.get(field.name, ()),
                           dest=f"cfg_{field.name}",
                           type=_parser_for(hints[field.name]), default=None, metavar="V",
                           help=help_line(config_cls, field.name, field.default), **alone)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key[4:]: value for key, value in vars(args).items() if key.startswith("cfg_") and value is not None}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, help="where to write the run (default runs/llm-<kind>-...)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue a run of this command from its newest checkpoint (or from a checkpoints/step_N "
                             "folder), with its own command line; only --steps/--max-steps, --save-every, "
                             "--torch-threads, --device, --nproc, --quiet and --no-tensorboard may change")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")


def register(subparsers) -> None:
    """Add the `llm` command and its subcommands."""
    llm = subparsers.add_parser("llm", help="language models: sft, reward model, PPO-RLHF, GRPO, eval")
    sub = llm.add_subparsers(dest="llm_command", required=True, parser_class=type(llm))

    sft = sub.add_parser("sft", help="supervised fine-tuning on a built-in task to a weak starting accuracy, "
                                     "or on your prompt/completion or messages dataset")
    sft.add_argument("--model", help="built-in model name (tiny, tiny-llama, small) or a directory (default tiny)")
    _dataset_args(sft, "examples: 'prompt' + 'completion' columns (strings, or chat messages + a list with one "
                       "assistant message) or a 'messages' column (a chat ending in the assistant turn to learn)")
    _common(sft)
    _add_fields(sft, SFTConfig)
    sft.set_defaults(handler=cmd_sft)

    rm = sub.add_parser("rm", help="train a reward model on a task's synthetic preference pairs or your "
                                   "preference dataset")
    rm.add_argument("--init", help="backbone: built-in name, model directory or run directory (default tiny)")
    _dataset_args(rm, "preference pairs: 'prompt', 'chosen', 'rejected' columns (strings, or chat messages + lists "
                      "with one assistant message), or chosen/rejected conversations sharing their prompt")
    _common(rm)
    _add_fields(rm, RewardModelConfig)
    rm.set_defaults(handler=cmd_rm)

    rlhf = sub.add_parser("rlhf", help="PPO-RLHF against a reward model and/or reward functions")
    rlhf.add_argument("--init", help="policy: run directory (e.g. of `llm sft`) or model directory (required)")
    rlhf.add_argument("--reward-model", type=Path,
                      help="reward model: a run directory of `proximo llm rm` or a transformers sequence classifier "
                           "with num_labels 1 (TRL's RewardTrainer writes one); the first of the training rewards")
    _dataset_args(rlhf, "prompts: a 'prompt' column (string or chat messages); other columns go to the rewards")
    rlhf.add_argument("--reward", action="append", metavar="MODULE:FUNCTION",
                      help="a training reward (with or instead of --reward-model), as for `llm grpo`: "
                           "package.module:function, path/to/file.py:function, a built-in (proximo:exact_match, ...) "
                           "or another reward-model directory; repeatable")
    rlhf.add_argument("--reward-weights", type=float, nargs="+", metavar="W",
                      help="one weight per reward: --reward-model first, then each --reward (default 1 each)")
    rlhf.add_argument("--eval-reward", action="append", metavar="MODULE:FUNCTION",
                      help="true reward, measured only: held-out evaluation and the training rows' accuracy "
                           "column (e.g. proximo:exact_match with an 'answer' column); repeatable. Without it a "
                           "dataset run evaluates the training reward")
    rlhf.add_argument("--nproc", type=int, metavar="K",
                      help="train with K data-parallel processes on this machine (re-launches itself under "
                           "torchrun; prompts_per_step is the step's total, split evenly over them)")
    _common(rlhf)
    _add_fields(rlhf, RLHFConfig)
    rlhf.set_defaults(handler=cmd_rlhf)

    grpo = sub.add_parser("grpo", help="GRPO (and RLOO, REINFORCE++, Dr. GRPO, DAPO, GSPO) on a task or your "
                                       "dataset and reward functions")
    grpo.add_argument("--init", "--model", dest="init",
                      help="policy: run directory (e.g. of `llm sft`), model directory or built-in name (required)")
    grpo.add_argument("--dataset", metavar="FILE",
                      help="prompts: .jsonl/.json/.csv/.parquet or a save_to_disk folder with a 'prompt' column "
                           "(string or chat messages); other columns go to the reward functions")
    held = grpo.add_mutually_exclusive_group()
    held.add_argument("--eval-dataset", metavar="FILE", help="held-out prompts (same format as --dataset)")
    held.add_argument("--eval-fraction", type=float, metavar="F",
                      help="hold out this fraction of --dataset's rows (seeded by --seed)")
    grpo.add_argument("--reward", action="append", metavar="MODULE:FUNCTION",
                      help="reward function f(prompts, completions, **columns) -> list[float | None]: "
                           "package.module:function, path/to/file.py:function or a built-in "
                           "(proximo:exact_match, proximo:numeric_match, proximo:format_regex=PATTERN, "
                           "proximo:length_penalty=N) or a reward-model directory from `proximo llm rm`; repeatable")
    grpo.add_argument("--reward-weights", type=float, nargs="+", metavar="W",
                      help="one weight per --reward (default 1 each)")
    grpo.add_argument("--nproc", type=int, metavar="K",
                      help="train with K data-parallel processes on this machine (re-launches itself under "
                           "torchrun; prompts_per_step is the step's total, split evenly over them)")
    _common(grpo)
    _add_fields(grpo, GRPOConfig)
    grpo.set_defaults(handler=cmd_grpo)

    new = sub.add_parser("new-model", help="make a fresh model directory (transformers LM from a config, a BPE "
                                           "tokenizer trained on your text, chat template): no download")
    new.add_argument("directory", type=Path, help="where to write it (config.json, safetensors weights, tokenizer)")
    new.add_argument("--family", default="llama", help="llama, mistral or gpt2")
    new.add_argument("--tokenizer", default="bpe", choices=("bpe", "sentencepiece"),
                     help="bpe: byte-level BPE saved as tokenizer.json; sentencepiece: tokenizer.model as the "
                          "Llama-2 / Mistral family ship it (no pad token, chat template in tokenizer_config.json)")
    new.add_argument("--max-shard-size", default=None, metavar="SIZE",
                     help="write the weights as shards of at most SIZE (e.g. 200KB, 2GB) with "
                          "model.safetensors.index.json, as save_pretrained does for large models")
    source = new.add_mutually_exclusive_group()
    source.add_argument("--texts", type=Path, metavar="FILE",
                        help="tokenizer training text: a .txt file (one text per line) or a dataset file whose "
                             "'prompt' (and 'completion') columns are used")
    source.add_argument("--task", default=None, help="train the tokenizer on a built-in task's prompts and answers "
                                                     "(default: add)")
    new.add_argument("--digits", type=int, default=None, help="size of --task's problems")
    new.add_argument("--vocab-size", type=int, default=512,
                     help="tokens the BPE tokenizer learns, special ones included (default 512)")
    new.add_argument("--hidden", type=int, default=128, help="hidden size of the model (default 128)")
    new.add_argument("--layers", type=int, default=3, help="transformer blocks (default 3)")
    new.add_argument("--heads", type=int, default=4, help="attention heads per block (default 4)")
    new.add_argument("--max-positions", type=int, default=128,
                     help="longest sequence the model takes, in tokens (default 128)")
    new.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    new.set_defaults(handler=cmd_new_model)

    ev = sub.add_parser("eval", help="score a policy, sampled and greedy, on its run's held-out prompts with its "
                                     "run's rewards, on a built-in task, or on --dataset with --reward")
    ev.add_argument("run_dir", help="run directory (grpo, rlhf, sft) or model directory")
    ev.add_argument("--task", default=None, help="score on a built-in task's held-out prompts (default: the run's "
                                                 "task, when it trained on one)")
    ev.add_argument("--digits", type=int, default=None, help="size of --task's problems (default: the run's, else "
                                                             "the task's own)")
    ev.add_argument("--dataset", metavar="FILE", help="prompts to score (every row, up to --prompts) in place of "
                                                      "the run's held-out rows")
    ev.add_argument("--reward", action="append", metavar="MODULE:FUNCTION",
                    help="reward to score with (as for `llm grpo`; repeatable) in place of the run's")
    ev.add_argument("--reward-weights", type=float, nargs="+", metavar="W", help="one weight per --reward")
    ev.add_argument("--prompts", type=int, default=None,
                    help="at most this many prompts (default: the run's num_eval_prompts, else 500)")
    ev.add_argument("--temperature", type=float, default=None, help="of the sampled pass (default: the run's)")
    ev.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's")
    ev.set_defaults(handler=cmd_eval)


def _dataset_args(parser: argparse.ArgumentParser, what: str) -> None:
    """--dataset FILE and its held-out rows (--eval-dataset FILE or --eval-fraction F)."""
    parser.add_argument("--dataset", metavar="FILE", help=f".jsonl/.json/.csv/.parquet or a save_to_disk folder "
                                                          f"of {what}")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--eval-dataset", metavar="FILE", help="held-out rows (same format as --dataset)")
    held.add_argument("--eval-fraction", type=float, metavar="F",
                      help="hold out this fraction of --dataset's rows (seeded by --seed)")


def _dataset_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """dataset=/eval_dataset=/eval_fraction= for a trainer, or {} (held-out flags need --dataset)."""
    if args.dataset is None:
        if args.eval_dataset is not None or args.eval_fraction is not None:
            raise ProximoError("--eval-dataset and --eval-fraction hold out rows of a --dataset; give --dataset")
        return {}
    return dict(dataset=args.dataset, eval_dataset=args.eval_dataset, eval_fraction=args.eval_fraction)


def _init_source(text: str) -> str | Path:
    return text if text in BUILTIN_MODELS else Path(text)


def _run_task(init: str | Path) -> dict[str, Any]:
    """The task/digits of the run that produced init, if it is a proximo run directory."""
    path = Path(init) / "config.json"
    if isinstance(init, Path) and path.is_file():
        data = load_json(path)
        if "kind" in data and "config" in data:
            return {k: data["config"][k] for k in ("task", "digits") if k in data["config"]}
    return {}


ACCURACY_REWARDS = ("exact_match", "numeric_match")  # 0/1 per sample: their mean is an accuracy


def reward_label(names: list[str], weights: list[float]) -> str:
    """What a mean of these rewards is, in words: 'accuracy (exact_match)', 'mean reward (f)', or 'mean
    weighted reward (1 x f + 0.2 x g)'."""
    if len(names) == 1 and weights[0] == 1.0:
        task = names[0].startswith("task:")
        kind = "accuracy" if task or names[0] in ACCURACY_REWARDS else "mean reward"
        return f"{kind} ({'exact answers of the ' + names[0][5:] + ' task' if task else names[0]})"
    return "mean weighted reward (" + " + ".join(f"{w:g} x {n}" for n, w in zip(names, weights)) + ")"


def _print_eval(summary: dict[str, Any], trainer) -> None:
    """The held-out figures before -> after training, each named for what it is."""
    before, after = summary["before"], summary["after"]
    names = [f"task:{trainer.task.name}"] if trainer.reward_is_task and trainer.task is not None \
        else trainer.rewards.names
    what = reward_label(names, trainer.rewards.weights)
    where = (f"{len(trainer.eval_prompts)} held-out prompts" if trainer.eval_rows == "held-out" else
             f"{len(trainer.eval_prompts)} training prompts (nothing held out)")
    print(f"{what} on {where}:")
    print(f"  sampled (temperature {trainer.config.temperature:g}): {before['eval_sampled_accuracy']:.3f} -> "
          f"{after['eval_sampled_accuracy']:.3f}")
    print(f"  greedy: {before['eval_greedy_accuracy']:.3f} -> {after['eval_greedy_accuracy']:.3f}")


def cmd_sft(args: argparse.Namespace) -> int:
    """Train from scratch (or a directory) on a task; print the held-out accuracy it stopped at."""
    _refuse_torchrun("sft")
    args = _resumed(args, "sft")
    trainer = SFT(_init_source(args.model or "tiny"), run_dir=args.run_dir, verbose=not args.quiet,
                  tensorboard=not args.no_tensorboard, **_dataset_kwargs(args), **_overrides(args))
    _start_or_resume(trainer, args)
    summary = trainer.train()
    print(f"run: {summary['run_dir']}")
    print(f"steps: {summary['steps']}  stop: {summary['stop_reason']}  time: {summary['wall_time_s']:.1f} s")
    if "eval_nll" in summary:
        rows = summary["eval_rows"]
        print(f"{rows} completion NLL (nats/token): {summary['eval_nll_before']:.3f} -> {summary['eval_nll']:.3f}")
        print(f"{rows} greedy exact match: {summary['eval_greedy_accuracy_before']:.3f} -> "
              f"{summary['eval_greedy_accuracy']:.3f}")
    else:
        print(f"held-out accuracy: sampled {summary['eval_sampled_accuracy']:.3f}  "
              f"greedy {summary['eval_greedy_accuracy']:.3f}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Train a reward model; print its held-out pairwise accuracy."""
    _refuse_torchrun("rm")
    args = _resumed(args, "rm")
    init = _init_source(args.init or "tiny")
    data = _dataset_kwargs(args)
    # The task of the init run applies only to task pairs, not to the user's dataset.
    overrides = {**({} if data else _run_task(init)), **_overrides(args)}
    trainer = RewardModelTrainer(init, run_dir=args.run_dir, verbose=not args.quiet,
                                 tensorboard=not args.no_tensorboard, **data, **overrides)
    _start_or_resume(trainer, args)
    summary = trainer.train()
    print(f"run: {summary['run_dir']}")
    print(f"{summary['eval_rows']} pairwise accuracy ({summary['eval_pairs']} pairs): "
          f"{summary['pairwise_accuracy_before']:.3f} -> {summary['pairwise_accuracy']:.3f}")
    return 0


def cmd_rlhf(args: argparse.Namespace) -> int:
    """PPO-RLHF from --init against --reward-model and/or --reward functions."""
    args = _resumed(args, "rlhf")
    if args.init is None:
        raise ProximoError("llm rlhf needs --init MODEL (or --resume RUN_DIR)")
    init = _init_source(args.init)
    data = _dataset_kwargs(args)
    if args.reward_model is None and not args.reward:
        raise ProximoError("give the training reward: --reward-model DIR (a `proximo llm rm` run or a transformers "
                           "reward model) and/or --reward MODULE:FUNCTION")
    if args.eval_reward and not data:
        raise ProximoError("--eval-reward scores held-out rows of a --dataset; give --dataset (on a task the task's "
                           "exact answers are the true reward)")
    count = int(args.reward_model is not None) + len(args.reward or [])
    if args.reward_weights is not None and len(args.reward_weights) != count:
        raise ProximoError(f"{len(args.reward_weights)} --reward-weights for {count} rewards; give one per reward "
                           f"(--reward-model first, then each --reward)")
    inherited = {} if data else _run_task(init)
    if args.nproc is not None:
        return _launch_rl(args, "rlhf", RLHFConfig, {**inherited, **_overrides(args)}, bool(data), cmd_rlhf)
    with _one_voice():
        trainer = RLHF(init, reward_model=args.reward_model, reward_fn=args.reward,
                       reward_weights=args.reward_weights, eval_reward_fn=args.eval_reward, run_dir=args.run_dir,
                       verbose=not args.quiet, tensorboard=not args.no_tensorboard, **data,
                       **{**inherited, **_overrides(args)})
    _start_or_resume(trainer, args)
    summary = _train_on_ranks(trainer)
    if summary is None:
        return 0
    print(f"run: {summary['run_dir']}")
    first, last = trainer.history[0], trainer.history[-1]
    trained = trainer.train_rewards
    print(f"training reward ({reward_label(trained.names, trained.weights)}) of the step's samples: "
          f"{first['score']:.3f} -> {last['score']:.3f}  "
          f"KL to reference (per token, last 10 steps): {summary['kl_ref_last10']:.4f}")
    _print_eval(summary, trainer)
    return 0


def cmd_grpo(args: argparse.Namespace) -> int:
    """GRPO from --init on the task's reward, or on --dataset with --reward functions (under torchrun:
    one rank of a data-parallel run; --nproc K starts K of them)."""
    args = _resumed(args, "grpo")
    if args.init is None:
        raise ProximoError("llm grpo needs --init MODEL (a built-in name, model directory or run directory), or "
                           "--resume RUN_DIR")
    init = _init_source(args.init)
    if args.nproc is not None:
        inherited = {} if args.dataset is not None else _run_task(init)
        return _launch_rl(args, "grpo", GRPOConfig, {**inherited, **_overrides(args)},
                          args.dataset is not None or bool(args.reward), cmd_grpo)
    if args.reward_weights is not None and not args.reward:
        raise ProximoError("--reward-weights needs --reward functions to weigh")
    if args.dataset is None and (args.eval_dataset is not None or args.eval_fraction is not None):
        raise ProximoError("--eval-dataset and --eval-fraction hold out prompts of a --dataset; give --dataset")
    if args.dataset is not None and not args.reward:
        raise ProximoError("--dataset needs at least one --reward module:function (or --reward proximo:exact_match)")
    # The task of the init run applies only to task prompts, not to the user's dataset.
    inherited = {} if args.dataset is not None else _run_task(init)
    data = {}
    if args.dataset is not None:
        data = dict(dataset=args.dataset, eval_dataset=args.eval_dataset, eval_fraction=args.eval_fraction)
    with _one_voice():
        trainer = GRPO(init, reward_fn=args.reward, reward_weights=args.reward_weights, run_dir=args.run_dir,
                       verbose=not args.quiet, tensorboard=not args.no_tensorboard, **data,
                       **{**inherited, **_overrides(args)})
    _start_or_resume(trainer, args)
    summary = _train_on_ranks(trainer)
    if summary is None:
        return 0
    print(f"run: {summary['run_dir']}")
    print(f"steps: {summary['steps']}  time: {summary['wall_time_s']:.1f} s  "
          f"generated tokens/s: {summary['gen_tokens_per_s']:,.0f}")
    _print_eval(summary, trainer)
    return 0


def _training_texts(path: Path) -> list[str]:
    """Tokenizer training texts from a .txt file (a line each) or a dataset file's text columns (prompt,
    completion, messages, chosen, rejected; strings or chat messages)."""
    if not path.exists():
        raise ProximoError(f"--texts {path}: no such file")
    if path.suffix == ".txt":
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        texts = []
        for row in _read_rows(path):  # any columns: a messages or preference file has no 'prompt'-only shape
            for key in ("prompt", "completion", "messages", "chosen", "rejected"):
                value = row.get(key)
                if isinstance(value, str):
                    texts.append(value)
                elif isinstance(value, list):
                    texts.extend(m.get("content", "") for m in value if isinstance(m, dict))
    if not texts:
        raise ProximoError(f"--texts {path} holds no text to train a tokenizer on")
    return texts


def cmd_new_model(args: argparse.Namespace) -> int:
    """Write a fresh model directory (random weights, a tokenizer trained here)."""
    for name in ("vocab_size", "hidden", "layers", "heads", "max_positions"):
        if getattr(args, name) < 1:
            raise ProximoError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.directory.exists() and any(args.directory.iterdir()):
        raise ProximoError(f"{args.directory} exists and is not empty; pick a new directory")
    texts = _training_texts(args.texts) if args.texts else task_texts(get_task(args.task or "add", args.digits))
    directory = make_model_dir(args.directory, texts, args.family, args.vocab_size, args.hidden, args.layers,
                               args.heads, args.max_positions, args.seed, tokenizer=args.tokenizer,
                               max_shard_size=args.max_shard_size)
    model, tokenizer, _ = load_model(directory)
    print(f"wrote {directory}: {args.family}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{tokenizer.vocab_size} tokens, chat template")
    return 0


# What --resume may set anew: how long the run goes, how often it saves, and where and how it runs. Everything
# else (model, data, rewards, every setting of the training math) is the run's own command line.
RESUME_FIELDS = ("steps", "max_steps", "save_every", "torch_threads", "device")
RESUME_FLAGS = ("quiet", "no_tensorboard", "nproc")
_MODEL_FLAGS = {"sft": ("model",), "rm": ("init",), "rlhf": ("init", "reward_model"), "grpo": ("init",)}


def _resumed(args: argparse.Namespace, kind: str) -> argparse.Namespace:
    """args as they are, or for --resume RUN the run's own command line (config.json "command") with the
    run directory, the checkpoint to load (args.resume_from) and what a resume may change; ProximoError in
    one line for a run of another command, a changed model or data, or another setting."""
    if getattr(args, "command_line", None) is not None:
        return args  # already resolved (a handler re-entered by --nproc 1)
    if args.resume is None:
        args.command_line = [token for i, token in enumerate(args.argv) if not _nproc_token(args.argv, i)]
        args.resume_from = None
        return args
    folder = resume_checkpoint(args.resume)
    run_dir = folder.parent.parent if folder != Path(args.resume) else Path(args.resume)
    data = load_json(run_dir / "config.json")
    if data.get("kind") != kind:
        raise ProximoError(f"{run_dir} is a `proximo llm {data.get('kind')}` run, not `llm {kind}`; resume it with "
                           f"`proximo llm {data.get('kind')} --resume {run_dir}`")
    saved_argv = data.get("command")
    if not isinstance(saved_argv, list):
        raise ProximoError(f"{run_dir} was started from Python, not the command line; resume it there: build its "
                           f"trainer as before with run_dir={str(run_dir)!r}, then trainer.resume({str(run_dir)!r})")
    saved = _llm_parser().parse_args(saved_argv)
    for name in _MODEL_FLAGS[kind]:
        given, before = getattr(args, name), getattr(saved, name) or "tiny"  # (sft --model, rm --init default)
        if given is not None and _source_key(given) != _source_key(before):
            flag = "--" + name.replace("_", "-")
            raise ProximoError(f"--resume continues {run_dir} from the model it was trained from ({flag} {before}); "
                               f"leave out {flag} {given} (another model is a new run: leave out --resume)")
    changed = sorted(key for key, value in vars(args).items() if value not in (None, False)
                     and key not in ("resume", "argv", "handler", "command", "command_line", "llm_command", "run_dir",
                                     *_MODEL_FLAGS[kind], *RESUME_FLAGS, *(f"cfg_{f}" for f in RESUME_FIELDS)))
    if changed:
        names = ", ".join("--" + key.removeprefix("cfg_").replace("_", "-") for key in changed)
        allowed = ", ".join("--" + f.replace("_", "-") for f in (*RESUME_FIELDS, *RESUME_FLAGS))
        raise ProximoError(f"--resume keeps the run's own command line; {names} cannot change (only {allowed} may)")
    if args.run_dir is not None and Path(args.run_dir).resolve() != run_dir.resolve():
        raise ProximoError(f"--resume continues {run_dir} in place; leave out --run-dir {args.run_dir}")
    for key in (*RESUME_FLAGS, *(f"cfg_{f}" for f in RESUME_FIELDS)):
        value = getattr(args, key, None)
        if value not in (None, False):
            setattr(saved, key, value)
    saved.nproc = getattr(args, "nproc", None)
    saved.run_dir, saved.argv, saved.command_line, saved.resume = run_dir, args.argv, saved_argv, args.resume
    saved.resume_from = folder
    return saved


def _source_key(source: Any) -> str:
    """A model source as compared by --resume: a built-in name as it is, a path made absolute."""
    text = str(source)
    return text if text in BUILTIN_MODELS else str(Path(text).resolve())


def _nproc_token(argv: list[str], i: int) -> bool:
    return _is_nproc_token(argv, i)


def _llm_parser() -> argparse.ArgumentParser:
    """The parser of `proximo llm ...` command lines (what --resume replays), as the full `proximo` parser has it."""
    parser = ArgumentParser(prog="proximo")
    register(parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser))
    return parser


def _start_or_resume(trainer, args: argparse.Namespace) -> None:
    """Record the run's command line in config.json (what --resume replays); load the checkpoint to resume."""
    trainer.run.record(command=args.command_line)
    if args.resume_from is not None:
        trainer.load_training_state(args.resume_from)


def _train_on_ranks(trainer) -> dict[str, Any] | None:
    """trainer.train(), leaving the process group after; the summary on rank 0, None on the others
    (rank 0 alone prints)."""
    try:
        summary = trainer.train()
    finally:
        trainer.world.close()
    return summary if trainer.world.is_main else None


@contextmanager
def _one_voice():
    """Under torchrun every rank fails the same construction check: rank 0 alone says it (the others exit
    quietly with status 2)."""
    try:
        yield
    except ProximoError as exc:
        if launched_by_torchrun() and os.environ.get("RANK", "0") != "0" and not isinstance(exc, EchoedError):
            raise EchoedError(str(exc)) from exc
        raise


def _launch_rl(args: argparse.Namespace, kind: str, config_cls, fields: dict[str, Any], own_data: bool,
               handler) -> int:
    """`llm grpo|rlhf --nproc K`: check the split here (one line, not K), then start K ranks under torchrun."""
    if args.nproc < 1:
        raise ProximoError(f"--nproc must be at least 1, got {args.nproc}")
    if launched_by_torchrun():
        raise ProximoError("--nproc starts torchrun itself; under torchrun leave it out (--nproc-per-node sets the "
                           "process count)")
    if own_data and "task" not in fields:
        fields["task"] = ""  # as the trainers do: prompts (and rewards) of the user's, no task
    config = config_cls(**fields)
    split_prompts(config, args.nproc)
    if getattr(config, "async_generation", False):
        check_async_generation(config, processes=args.nproc)
    if args.nproc == 1:
        args.nproc = None
        return handler(args)
    argv = [token for i, token in enumerate(args.argv) if not _is_nproc_token(args.argv, i)]
    if args.run_dir is None:
        argv += ["--run-dir", str(default_run_dir(kind, config.task, config.seed))]  # one name for every rank
    return launch_local(args.nproc, argv)


def _refuse_torchrun(command: str) -> None:
    """SFT and reward-model training are single-process: K ranks would be K copies writing one directory."""
    if launched_by_torchrun():
        raise ProximoError(f"`proximo llm {command}` runs in one process; start it without torchrun (data "
                           f"parallel is wired for `llm grpo` and `llm rlhf`: --nproc K)")


def _run_record(path: Path) -> dict[str, Any]:
    """config.json of the proximo run that path is (or whose model/ or checkpoints/step_N/ folder it is);
    {} for a plain model directory."""
    for folder in (path, path.parent, path.parent.parent):
        config = folder / "config.json"
        if config.is_file():
            data = load_json(config)
            if isinstance(data, dict) and "kind" in data and "config" in data:
                return data
    return {}


def _eval_prompts(args: argparse.Namespace, record: dict[str, Any]):
    """(PromptDataset or None, task or None, a sentence saying which prompts) for `llm eval`."""
    cfg = record.get("config", {})
    if args.task is not None:
        if args.dataset is not None:
            raise ProximoError("give --task or --dataset, not both")
        task = get_task(args.task, args.digits)
        return None, task, f"held-out prompts of the {task.name} task (digits {task.digits})"
    if args.dataset is not None:
        return PromptDataset.load(args.dataset), None, f"rows of {args.dataset}"
    if record.get("eval_dataset_file"):
        return (PromptDataset.load(record["eval_dataset_file"]), None,
                f"the run's held-out rows ({record['eval_dataset_file']})")
    if record.get("dataset_file"):
        data = PromptDataset.load(record["dataset_file"])
        if record.get("eval_fraction") is not None:
            held = data.split(record["eval_fraction"], cfg.get("seed", 1))[1]
            return held, None, (f"the run's held-out rows of {record['dataset_file']} (eval_fraction "
                                f"{record['eval_fraction']:g}, seed {cfg.get('seed', 1)})")
        return data, None, f"the run's training rows ({record['dataset_file']}; it held none out)"
    if record.get("kind") == "sft" and not cfg.get("task"):
        raise ProximoError(f"{args.run_dir} is an sft run on a dataset, which has no prompts-only held-out set or "
                           f"reward; give --dataset FILE (a 'prompt' column) and --reward MODULE:FUNCTION")
    if record.get("dataset") or record.get("eval_dataset"):
        raise ProximoError(f"{args.run_dir}: the run's prompts were given in Python, not as a file; give "
                           f"--dataset FILE (and --reward)")
    if cfg.get("task"):
        task = get_task(args.task or cfg["task"], args.digits or cfg.get("digits"))
        return None, task, f"held-out prompts of the {task.name} task (digits {task.digits})"
    raise ProximoError(f"{args.run_dir} is no run of `proximo llm grpo|rlhf|sft` (a plain model directory); say "
                       f"what to score on: --task NAME, or --dataset FILE with --reward")


def _eval_rewards(args: argparse.Namespace, record: dict[str, Any], task):
    """(RewardSet, the names of its rewards as _print labels them) for `llm eval`."""
    if args.reward_weights is not None and not args.reward:
        raise ProximoError("--reward-weights needs --reward functions to weigh")
    if args.reward:
        rewards = RewardSet(args.reward, args.reward_weights)
        return rewards, rewards.names
    if task is not None:
        return RewardSet(task.reward), [f"task:{task.name}"]
    specs, names = record.get("eval_reward_specs"), record.get("eval_rewards") or []
    if not specs:
        why = "an sft run trains on no reward" if record.get("kind") == "sft" else "it records none"
        raise ProximoError(f"{args.run_dir}: no reward to score with ({why}); give --reward MODULE:FUNCTION")
    if any(name.startswith("task:") for name in names):
        raise ProximoError(f"{args.run_dir}: the run's reward is its task's exact answer, which scores only that "
                           f"task's prompts; give --reward MODULE:FUNCTION for --dataset")
    missing = [name for name, spec in zip(names, specs) if spec is None]
    if missing:
        raise ProximoError(f"{args.run_dir}: the run's reward {', '.join(missing)} was a Python object, not a spec "
                           f"proximo can load again; give --reward MODULE:FUNCTION")
    rewards = RewardSet(specs, record.get("eval_reward_weights"))
    return rewards, rewards.names


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a policy, sampled and greedy, on the run's held-out prompts with the run's rewards (or a task,
    or --dataset with --reward); print each figure with what it is."""
    if args.prompts is not None and args.prompts < 1:
        raise ProximoError(f"--prompts must be at least 1, got {args.prompts}")
    path = Path(args.run_dir)
    record = _run_record(path)
    if record.get("kind") == "rm":
        raise ProximoError(f"{path} is a reward-model run; `llm eval` scores policies (its held-out pairwise "
                           f"accuracy is in its summary.json)")
    cfg = record.get("config", {})
    data, task, which = _eval_prompts(args, record)
    rewards, names = _eval_rewards(args, record, task)
    model, tokenizer, _ = load_model(path)
    count = args.prompts or cfg.get("num_eval_prompts") or 500
    temperature = args.temperature if args.temperature is not None else cfg.get("temperature", 1.0)
    max_prompt_tokens = cfg.get("max_prompt_tokens")
    if task is not None:
        prompts, dataset = task.held_out_prompts(count), None
        # A tools run's turns are longer than the task's answer: its own max_new_tokens.
        max_new = args.max_new_tokens or (cfg.get("tools") and cfg.get("max_new_tokens")) or task.max_new_tokens
    else:
        dataset = type(data)(data.rows[:count], data.source)
        schemas = [t.schema for t in load_tools(cfg["tools"])] if cfg.get("tools") else None
        prompts = [render_prompt(p, tokenizer, schemas) for p in dataset.prompts(range(len(dataset)))]
        max_new = args.max_new_tokens or cfg.get("max_new_tokens") or 16
    scored = [0, 0]
    slot = 0

    def score(start: int, completions: list[str]):
        rows = list(range(start, start + len(completions)))
        values = score_samples(rewards, dataset, rows, prompts[start:start + len(completions)], completions)[0]
        scored[slot] += int((~values.isnan()).sum())
        return values

    # A run trained with tools is scored over whole episodes with the same tools (its last turn scored).
    env = None
    if cfg.get("tools"):
        env = ToolEnvironment(load_tools(cfg["tools"]), tokenizer, cfg.get("tool_timeout_s", 5.0))

    def episodes(greedy: bool):
        return None if env is None else episode_sampler(model, tokenizer, env, max_new, cfg.get("max_turns", 4),
                                                        temperature, greedy)
    sampled = evaluate(model, tokenizer, prompts, None, max_new, temperature, score=score,
                       max_prompt_tokens=max_prompt_tokens, sample=episodes(False))
    slot = 1
    greedy = evaluate(model, tokenizer, prompts, None, max_new, greedy=True, score=score,
                      max_prompt_tokens=max_prompt_tokens, sample=episodes(True))
    kind = f"{record['kind']} run" if record else "model directory"
    print(f"model: {path} ({kind})")
    print(f"prompts: {len(prompts)} {which}")
    print(f"{reward_label(names, rewards.weights)}, mean over the scored samples:")
    print(f"  sampled (temperature {temperature:g}): {sampled['reward']:.3f} ({scored[0]} of {len(prompts)} scored)")
    print(f"  greedy: {greedy['reward']:.3f} ({scored[1]} of {len(prompts)} scored)")
    return 0
