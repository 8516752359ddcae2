"""`proximo llm sft | rm | rlhf | grpo | eval`: the language-model commands."""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proximo.errors import EchoedError, ProximoError
from proximo.llm.config import GRPOConfig, RewardModelConfig, RLHFConfig, SFTConfig


# TRL's names for the same settings: num_iterations passes over each generation batch, each split into
# steps_per_generation optimizer steps.
FIELD_ALIASES = {"n_epochs": ("--num-iterations",), "num_minibatches": ("--steps-per-generation",)}


def _add_fields(parser: argparse.ArgumentParser, config_cls) -> None:
    """One --dashed-flag per config field, unset by default so the dataclass defaults apply."""
    from proximo.cli import _parser_for

    group = parser.add_argument_group(f"{config_cls.__name__} fields")
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        default = field.default
        group.add_argument(f"--{field.name.replace('_', '-')}", *FIELD_ALIASES.get(field.name, ()),
                           dest=f"cfg_{field.name}",
                           type=_parser_for(hints[field.name]), default=None, metavar="V",
                           help=f"default {default}")


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

    rlhf = sub.add_parser("rlhf", help="PPO-RLHF against a reward model")
    rlhf.add_argument("--init", help="policy: run directory (e.g. of `llm sft`) or model directory (required)")
    rlhf.add_argument("--reward-model", type=Path, help="run directory of `proximo llm rm` (required)")
    _dataset_args(rlhf, "prompts: a 'prompt' column (string or chat messages); other columns go to --reward")
    rlhf.add_argument("--reward", action="append", metavar="MODULE:FUNCTION",
                      help="true reward for held-out evaluation and the training rows' accuracy column only (the "
                           "reward model alone drives training), e.g. proximo:exact_match with an 'answer' column; "
                           "repeatable. Without it a dataset run evaluates the reward model's score")
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
    new.add_argument("directory", type=Path, help="where to write it (config.json, model.safetensors, tokenizer)")
    new.add_argument("--family", default="llama", help="llama or gpt2")
    source = new.add_mutually_exclusive_group()
    source.add_argument("--texts", type=Path, metavar="FILE",
                        help="tokenizer training text: a .txt file (one text per line) or a dataset file whose "
                             "'prompt' (and 'completion') columns are used")
    source.add_argument("--task", default=None, help="train the tokenizer on a built-in task's prompts and answers "
                                                     "(default: add)")
    new.add_argument("--digits", type=int, default=None, help="size of --task's problems")
    new.add_argument("--vocab-size", type=int, default=512)
    new.add_argument("--hidden", type=int, default=128)
    new.add_argument("--layers", type=int, default=3)
    new.add_argument("--heads", type=int, default=4)
    new.add_argument("--max-positions", type=int, default=128)
    new.add_argument("--seed", type=int, default=0)
    new.set_defaults(handler=cmd_new_model)

    ev = sub.add_parser("eval", help="held-out accuracy of a model on a built-in task (sampled and greedy)")
    ev.add_argument("run_dir", help="run directory or model directory")
    ev.add_argument("--task", default=None, help="task (default: the run's task)")
    ev.add_argument("--digits", type=int, default=None)
    ev.add_argument("--prompts", type=int, default=500, help="held-out prompts")
    ev.add_argument("--temperature", type=float, default=1.0)
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
    from proximo.llm.models import BUILTIN_MODELS
    return text if text in BUILTIN_MODELS else Path(text)


def _run_task(init: str | Path) -> dict[str, Any]:
    """The task/digits of the run that produced init, if it is a proximo run directory."""
    path = Path(init) / "config.json"
    if isinstance(init, Path) and path.is_file():
        from proximo.checkpoint import load_json
        data = load_json(path)
        if "kind" in data and "config" in data:
            return {k: data["config"][k] for k in ("task", "digits") if k in data["config"]}
    return {}


def _print_eval(summary: dict[str, Any]) -> None:
    before, after = summary["before"], summary["after"]
    print(f"held-out sampled accuracy: {before['eval_sampled_accuracy']:.3f} -> {after['eval_sampled_accuracy']:.3f}")
    print(f"held-out greedy accuracy:  {before['eval_greedy_accuracy']:.3f} -> {after['eval_greedy_accuracy']:.3f}")


def cmd_sft(args: argparse.Namespace) -> int:
    """Train from scratch (or a directory) on a task; print the held-out accuracy it stopped at."""
    _refuse_torchrun("sft")
    args = _resumed(args, "sft")
    from proximo.llm.sft import SFT
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
    from proximo.llm.reward_model import RewardModelTrainer
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
    """PPO-RLHF from --init against --reward-model."""
    args = _resumed(args, "rlhf")
    if args.init is None or args.reward_model is None:
        raise ProximoError("llm rlhf needs --init MODEL and --reward-model RM_RUN (or --resume RUN_DIR)")
    init = _init_source(args.init)
    data = _dataset_kwargs(args)
    if args.reward and not data:
        raise ProximoError("--reward scores held-out rows of a --dataset; give --dataset (on a task the task's "
                           "exact answers are the true reward)")
    inherited = {} if data else _run_task(init)
    if args.nproc is not None:
        return _launch_rl(args, "rlhf", RLHFConfig, {**inherited, **_overrides(args)}, bool(data), cmd_rlhf)
    from proximo.llm.rlhf import RLHF  # after the launch: the launcher itself trains nothing
    with _one_voice():
        trainer = RLHF(init, reward_model=args.reward_model, eval_reward_fn=args.reward, run_dir=args.run_dir,
                       verbose=not args.quiet, tensorboard=not args.no_tensorboard, **data,
                       **{**inherited, **_overrides(args)})
    _start_or_resume(trainer, args)
    summary = _train_on_ranks(trainer)
    if summary is None:
        return 0
    print(f"run: {summary['run_dir']}")
    first, last = trainer.history[0], trainer.history[-1]
    print(f"reward-model score: {first['score']:.3f} -> {last['score']:.3f}  "
          f"KL to reference (per token, last 10 steps): {summary['kl_ref_last10']:.4f}")
    if data and not args.reward:
        print("(no --reward: the held-out numbers below are reward-model scores, not accuracies)")
    _print_eval(summary)
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
    from proximo.llm.grpo import GRPO  # after the launch: the launcher itself trains nothing
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
    _print_eval(summary)
    return 0


def _training_texts(path: Path) -> list[str]:
    """Tokenizer training texts from a .txt file (a line each) or a dataset file's text columns (prompt,
    completion, messages, chosen, rejected; strings or chat messages)."""
    if not path.exists():
        raise ProximoError(f"--texts {path}: no such file")
    if path.suffix == ".txt":
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from proximo.llm.data import _read_rows
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
    from proximo.llm.modeldir import make_model_dir, task_texts
    from proximo.llm.tasks import get_task
    for name in ("vocab_size", "hidden", "layers", "heads", "max_positions"):
        if getattr(args, name) < 1:
            raise ProximoError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.directory.exists() and any(args.directory.iterdir()):
        raise ProximoError(f"{args.directory} exists and is not empty; pick a new directory")
    texts = _training_texts(args.texts) if args.texts else task_texts(get_task(args.task or "add", args.digits))
    directory = make_model_dir(args.directory, texts, args.family, args.vocab_size, args.hidden, args.layers,
                               args.heads, args.max_positions, args.seed)
    from proximo.llm.models import load_model
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
    from proximo.checkpoint import load_json
    from proximo.cli import build_parser
    from proximo.llm.trainer import resume_checkpoint
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
    saved = build_parser().parse_args(saved_argv)
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
    from proximo.llm.models import BUILTIN_MODELS
    text = str(source)
    return text if text in BUILTIN_MODELS else str(Path(text).resolve())


def _nproc_token(argv: list[str], i: int) -> bool:
    from proximo.cli import _is_nproc_token
    return _is_nproc_token(argv, i)


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
    from proximo.distributed import launched_by_torchrun
    try:
        yield
    except ProximoError as exc:
        if launched_by_torchrun() and os.environ.get("RANK", "0") != "0" and not isinstance(exc, EchoedError):
            raise EchoedError(str(exc)) from exc
        raise


def _launch_rl(args: argparse.Namespace, kind: str, config_cls, fields: dict[str, Any], own_data: bool,
               handler) -> int:
    """`llm grpo|rlhf --nproc K`: check the split here (one line, not K), then start K ranks under torchrun."""
    from proximo.cli import _is_nproc_token
    from proximo.distributed import launch_local, launched_by_torchrun
    from proximo.llm.rl import split_prompts
    from proximo.llm.run import default_run_dir

    if args.nproc < 1:
        raise ProximoError(f"--nproc must be at least 1, got {args.nproc}")
    if launched_by_torchrun():
        raise ProximoError("--nproc starts torchrun itself; under torchrun leave it out (--nproc-per-node sets the "
                           "process count)")
    if own_data and "task" not in fields:
        fields["task"] = ""  # as the trainers do: prompts (and rewards) of the user's, no task
    config = config_cls(**fields)
    split_prompts(config, args.nproc)
    if args.nproc == 1:
        args.nproc = None
        return handler(args)
    argv = [token for i, token in enumerate(args.argv) if not _is_nproc_token(args.argv, i)]
    if args.run_dir is None:
        argv += ["--run-dir", str(default_run_dir(kind, config.task, config.seed))]  # one name for every rank
    return launch_local(args.nproc, argv)


def _refuse_torchrun(command: str) -> None:
    """SFT and reward-model training are single-process: K ranks would be K copies writing one directory."""
    from proximo.distributed import launched_by_torchrun
    if launched_by_torchrun():
        raise ProximoError(f"`proximo llm {command}` runs in one process; start it without torchrun (data "
                           f"parallel is wired for `llm grpo` and `llm rlhf`: --nproc K)")


def cmd_eval(args: argparse.Namespace) -> int:
    """Print held-out sampled and greedy accuracy of a model on a task."""
    from proximo.llm.models import load_model
    from proximo.llm.run import evaluate
    from proximo.llm.tasks import get_task
    if args.prompts < 1:
        raise ProximoError(f"--prompts must be at least 1, got {args.prompts}")
    saved = _run_task(Path(args.run_dir))
    task = get_task(args.task or saved.get("task") or "add", args.digits or saved.get("digits"))
    model, tokenizer, _ = load_model(Path(args.run_dir))
    prompts = task.held_out_prompts(args.prompts)
    sampled = evaluate(model, tokenizer, prompts, task.reward, task.max_new_tokens, args.temperature)
    greedy = evaluate(model, tokenizer, prompts, task.reward, task.max_new_tokens, greedy=True)
    print(f"{task.name} (digits {task.digits}), {len(prompts)} held-out prompts: "
          f"sampled accuracy {sampled['reward']:.3f} (temperature {args.temperature})  greedy {greedy['reward']:.3f}")
    return 0
