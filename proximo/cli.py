"""The `proximo` command line: train, eval, plot, and the commands other modules register."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from proximo.checkpoint import CheckpointError, ensure_run_dir
from proximo.config import PRESETS, PPOConfig, describe_preset, load_preset_file, make_config, planning_processes
from proximo.distributed import World, check_divides, init_world, launch_local, launched_by_torchrun
from proximo.errors import PEER_LOST_EXIT, ConfigError, DistributedError, EchoedError, ProximoError
from proximo.flags import (  # noqa: F401 - all of them are imported from here too
    FLAG_ALIASES, ArgumentParser, _is_nproc_token, _parser_for, add_config_flags, config_overrides, plain_warnings,
)
from proximo.plot import plot_runs
from proximo.saved import load_policy, read_run_config, resume_target
from proximo.stopping import TrainingInterrupted
from proximo.sweep.plots import is_sweep_dir, plot_sweep

# Each handler imports the code its command runs (trainers, envs, evaluation, video) inside itself: every `proximo`
# call builds the whole parser, so one command does not load what another runs.

# Modules that add subcommands: each defines register(subparsers) and sets `handler` defaults.
COMMAND_MODULES: list[str] = ["proximo.envs.check", "proximo.doctor", "proximo.llm.cli", "proximo.sweep.cli",
                              "proximo.export"]


def build_parser() -> ArgumentParser:
    """The full `proximo` parser with every registered subcommand."""
    parser = ArgumentParser(prog="proximo", description="Proximal Policy Optimization for gymnasium and LMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    train = sub.add_parser("train", help="train a PPO agent on a gymnasium env")
    train.add_argument("env_id", nargs="?", help="gymnasium id, e.g. CartPole-v1 (omit with --resume)")
    train.add_argument("--preset", choices=None, help=f"one of {', '.join(PRESETS)}")
    train.add_argument("--preset-file", type=Path, metavar="FILE",
                       help="config fields from a JSON/YAML file (e.g. the best.json of `proximo tune`); applied over "
                            "--preset, under the flags")
    train.add_argument("--run-dir", type=Path, help="where to write the run (default runs/<env>-<time>)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    train.add_argument("--env-kwargs", metavar="JSON", help="keyword arguments for the env, a JSON object (e.g. "
                       "'{\"sticky_action_prob\": 0.0}' for MinAtar, '{\"max_episode_steps\": 500}'); kept with the "
                       "run, so --resume and eval use them too")
    train.add_argument("--seeds", metavar="LIST",
                       help="train one agent per seed (1-16, 1,3,5 or 1-4,9) as one batched population in this "
                            "process; each writes its own run directory RUN_DIR/s<seed>")
    train.add_argument("--nproc", type=int, metavar="K",
                       help="train with K processes on this machine (re-launches itself under torchrun; batch_size "
                            "stays the global minibatch, total_steps counts all processes' steps)")
    add_config_flags(train)
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser("eval", help="evaluate a trained policy deterministically")
    evaluate.add_argument("run_dir", type=Path,
                          help="a run directory, a folder written by PPO.save, or a checkpoint folder")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to play (default 10)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the first episode's reset (default 0)")
    evaluate.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    evaluate.add_argument("--video", type=Path, metavar="DIR", help="also record episodes as mp4 files into DIR")
    evaluate.add_argument("--video-episodes", type=int, default=1, help="how many episodes to record (default 1)")
    evaluate.add_argument("--checkpoint", metavar="STEP_N", help="evaluate this checkpoint (step_N or a checkpoint "
                          "folder) instead of the final policy; without policy/ the newest intact one is used")
    evaluate.add_argument("--against", metavar="PLAYER", help="multi-agent runs: play two-player games against "
                          "random, lookahead (a scripted player) or another saved policy's folder; reports win / draw / "
                          "loss with 95%% intervals (--episodes games, seats alternating)")
    evaluate.set_defaults(handler=cmd_eval)
    register_plot(sub)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def default_run_dir(env_id: str, preset: str | None, seed: int) -> Path:
    """runs/<env>[-<preset>]-s<seed>-<YYYYmmdd-HHMMSS>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = env_id.replace("/", "_") + (f"-{preset}" if preset else "")
    return Path("runs") / f"{label}-s{seed}-{stamp}"


# Settings that do not change the training math, so a resume may set them anew.
RESUME_CHANGEABLE = ("total_steps", "save_every", "keep_checkpoints", "device", "eval_every", "stop_at_return",
                     "stop_patience", "track", "track_project", "track_run_name")


def env_kwargs_arg(args: argparse.Namespace) -> dict[str, Any]:
    """--env-kwargs as a dict ({} without it); a bad value is one ConfigError line."""
    text = getattr(args, "env_kwargs", None)
    if text is None:
        return {}
    if args.resume is not None:
        raise ConfigError("--resume keeps the run's env kwargs; leave out --env-kwargs")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--env-kwargs {text!r} is not JSON ({exc.msg}); give an object such as "
                          "'{\"max_episode_steps\": 500}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--env-kwargs {text!r} is not a JSON object; give one such as "
                          "'{\"max_episode_steps\": 500}'")
    return value


def train_plan(args: argparse.Namespace) -> dict[str, Any]:
    """What `train` will run, as JSON: env id and kwargs, config, run directory, and the checkpoint to resume."""
    overrides = config_overrides(args)
    env_kwargs = env_kwargs_arg(args)
    preset_file = getattr(args, "preset_file", None)
    if args.resume is not None and preset_file is not None:
        raise ConfigError("--resume keeps the run's config; leave out --preset-file")
    if args.resume is not None:
        run_dir, checkpoint, earlier = resume_target(args.resume)
        env_id, env_kwargs, saved = read_run_config(run_dir)
        if not env_id:
            raise ProximoError(f"{run_dir} was trained on an env factory; resume it from Python with Trainer")
        # Settings that do not change the training math may differ on resume (a run trained on a GPU
        # resumes on a CPU-only machine with --device cpu).
        changeable = {key: overrides.pop(key) for key in RESUME_CHANGEABLE if key in overrides}
        if overrides:
            flags = ", ".join(f"--{key.replace('_', '-')}" for key in RESUME_CHANGEABLE)
            raise ConfigError(f"--resume keeps the run's config; only {flags} may change, got {sorted(overrides)}")
        return {"env_id": env_id, "env_kwargs": env_kwargs, "config": saved.replace(**changeable).to_dict(),
                "run_dir": str(run_dir), "checkpoint": str(checkpoint), "earlier": earlier and str(earlier)}
    if not args.env_id:
        raise ProximoError("train needs an env id (e.g. `proximo train CartPole-v1`) or --resume RUN_DIR")
    if preset_file is not None:
        overrides = {**load_preset_file(preset_file), **overrides}
    config = make_config(args.preset, args.env_id, **overrides)
    run_dir = ensure_run_dir(args.run_dir or default_run_dir(args.env_id, args.preset, config.seed), create=False)
    return {"env_id": args.env_id, "env_kwargs": env_kwargs, "config": config.to_dict(), "run_dir": str(run_dir),
            "checkpoint": None, "earlier": None, "preset_note": describe_preset(args.preset, args.env_id, overrides)}


@plain_warnings
def cmd_train(args: argparse.Namespace) -> int:
    """Train, write the run directory, print the summary (under torchrun: one rank of a run)."""
    import torch

    from proximo.population.trainer import is_population

    if args.seeds is not None or (args.resume is not None and is_population(args.resume)):
        if args.nproc is not None:
            raise ConfigError("--seeds trains its agents in one process; leave out --nproc")
        return _train_population(args)
    if args.nproc is not None:
        return _launch_train(args)
    # With GPUs each rank takes its own (LOCAL_RANK); a CPU policy there still reduces through gloo.
    accelerator = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    world = init_world(accelerator) if launched_by_torchrun() else World.local()
    try:
        return _train(args, world)
    finally:
        world.close()


def _train(args: argparse.Namespace, world) -> int:
    from proximo.multiagent import trainer_class

    plan = world.on_main(lambda: train_plan(args))  # rank 0 alone reads the run directory
    config, run_dir = PPOConfig.from_dict(plan["config"]), Path(plan["run_dir"])
    report = world.is_main and not args.quiet
    if world.is_main and plan.get("preset_note"):
        print(plan["preset_note"], flush=True)  # even with --quiet: which values ran belongs with the result
    try:
        trainer = trainer_class(plan["env_id"])(plan["env_id"], config, run_dir, plan["env_kwargs"],
                                                verbose=not args.quiet, tensorboard=not args.no_tensorboard,
                                                world=world)
    except ConfigError as exc:
        if world.is_main:
            raise
        raise EchoedError(str(exc)) from exc  # every rank fails the same check of the config; rank 0 says it
    if plan["checkpoint"] is not None:
        try:
            trainer.load_training_state(Path(plan["checkpoint"]))
        except CheckpointError as exc:
            if plan["earlier"] is None:
                raise
            raise CheckpointError(f"{exc} (the previous checkpoint: --resume {plan['earlier']})") from exc
        if report:
            print(f"proximo: resuming {run_dir} from step {trainer.global_step:,}", file=sys.stderr)
    if report:
        print(f"proximo: training {trainer.env} for {config.total_steps:,} steps on {world.describe()} -> {run_dir}",
              file=sys.stderr)
    try:
        summary = trainer.train(config.total_steps)
    except TrainingInterrupted as stop:
        if world.is_main:
            print(f"proximo: {stop}", file=sys.stderr)
        return 128 + stop.signum
    if world.is_main:
        print(f"run: {run_dir}")
        print(f"steps: {summary['global_step']:,}  time: {summary['wall_time_s']:.1f} s  "
              f"steps/s: {summary['sps']:,.0f}  ({world.describe()})")
        print(f"eval return ({summary['eval_episodes']} episodes, deterministic): "
              f"{summary['eval_return_mean']:.1f} +- {summary['eval_return_std']:.1f}")
    return 0


def _train_population(args: argparse.Namespace) -> int:
    """`train ENV --seeds LIST` (or `--resume` of a population): K agents as one batch in this process."""
    import numpy as np

    from proximo.population.trainer import (
        Population, parse_seeds, population_configs, resume_population,
    )

    quiet = args.quiet
    env_kwargs = env_kwargs_arg(args)
    if args.resume is not None:
        if args.seeds is not None:
            raise ConfigError("--resume keeps the population's seeds; leave out --seeds")
        overrides = config_overrides(args)
        changeable = {key: overrides.pop(key) for key in RESUME_CHANGEABLE if key in overrides}
        if overrides:
            raise ConfigError(f"--resume keeps the run's config; only "
                              f"{', '.join('--' + k.replace('_', '-') for k in RESUME_CHANGEABLE)} may change, "
                              f"got {sorted(overrides)}")
        population = resume_population(args.resume, verbose=not quiet, tensorboard=not args.no_tensorboard,
                                       changes=changeable)
        run_dir = population.run_dir
        if not quiet:
            print(f"proximo: resuming the population {run_dir} ({population.k} agents) from step "
                  f"{population.global_step:,}", file=sys.stderr)
    else:
        if not args.env_id:
            raise ProximoError("train --seeds needs an env id (e.g. `proximo train CartPole-v1 --seeds 1-8`)")
        seeds = parse_seeds(args.seeds)
        overrides = config_overrides(args)
        if getattr(args, "preset_file", None) is not None:
            overrides = {**load_preset_file(args.preset_file), **overrides}
        if "seed" in overrides:
            raise ConfigError("--seeds sets every agent's seed; leave out --seed")
        config = make_config(args.preset, args.env_id, **overrides)
        label = args.env_id.replace("/", "_") + (f"-{args.preset}" if args.preset else "")
        run_dir = ensure_run_dir(args.run_dir or Path("runs") / f"{label}-seeds{args.seeds.replace(',', '_')}-"
                                 f"{time.strftime('%Y%m%d-%H%M%S')}", create=False)
        note = describe_preset(args.preset, args.env_id, overrides)
        if note:
            print(note, flush=True)
        population = Population(args.env_id, population_configs(config, seeds), run_dir, env_kwargs,
                                verbose=not quiet, tensorboard=not args.no_tensorboard)
        population.open()
    total = population.configs[0].total_steps
    if not quiet:
        print(f"proximo: training {population.k} agents of {population.env} for {total:,} steps each, as one "
              f"batch in this process -> {run_dir}", file=sys.stderr)
    try:
        summaries = population.train(total)
    except TrainingInterrupted as stop:
        print(f"proximo: stopped by {signal_name(stop.signum)} at step {stop.step:,}; every agent's checkpoint is "
              f"saved; continue with `proximo train --resume {run_dir}`", file=sys.stderr)
        return 128 + stop.signum
    wall = population.members[0].wall_time_s
    print(f"run: {run_dir}  ({population.k} agents, one process)")
    print(f"steps: {total:,} each  time: {wall:.1f} s  agent-steps/s: {total * population.k / max(wall, 1e-9):,.0f}")
    for name, summary in zip(population.names, summaries):
        print(f"  {name}: eval return ({summary['eval_episodes']} episodes) {summary['eval_return_mean']:.1f} +- "
              f"{summary['eval_return_std']:.1f}; last-100 training {summary['train_return_last100_mean']:.1f}")
    returns = np.array([s["eval_return_mean"] for s in summaries])
    print(f"eval return over {len(returns)} agents: {returns.mean():.1f} +- {returns.std():.1f}")
    return 0


def signal_name(signum: int) -> str:
    """SIGINT / SIGTERM for a signal number."""
    import signal

    return signal.Signals(signum).name


def _launch_train(args: argparse.Namespace) -> int:
    """`train --nproc K`: check the run here, then start K ranks of it under torchrun on this machine."""
    from proximo.envs.make import make_single_env
    from proximo.multiagent import trainer_class
    from proximo.train import Trainer

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    if launched_by_torchrun():
        raise ConfigError("--nproc starts torchrun itself; under torchrun leave it out (--nproc-per-node sets the "
                          "process count)")
    with planning_processes(args.nproc):
        plan = train_plan(args)
        check_divides(PPOConfig.from_dict(plan["config"]).batch_size, args.nproc)
    if args.nproc == 1:
        return _train(args, World.local())
    if trainer_class(plan["env_id"]) is Trainer:  # a wrong env id: one line here, not K there
        make_single_env(plan["env_id"], **plan["env_kwargs"]).close()
    argv = [token for i, token in enumerate(args.argv) if not _is_nproc_token(args.argv, i)]
    if args.resume is None and args.run_dir is None:
        argv += ["--run-dir", plan["run_dir"]]  # one default name for every rank (it holds the time)
    return launch_local(args.nproc, argv, Path(plan["run_dir"]))


@plain_warnings
def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate the policy of a run directory (or a saved policy or checkpoint folder)."""
    import numpy as np

    from proximo.envs.atari import pixel_options
    from proximo.evaluate import evaluate_policy

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {args.episodes}")
    policy, meta = load_policy(args.run_dir, checkpoint=args.checkpoint)
    from proximo.multiagent.envs import PREFIX

    if str(meta.get("env_id") or "").startswith(PREFIX):
        from proximo.multiagent.evaluate import evaluate_run, print_evaluation

        print_evaluation(evaluate_run(policy, meta, args.against, args.episodes, args.seed, not args.stochastic))
        return 0
    if args.against is not None:
        raise ConfigError("--against pits players of a multi-agent game; this run's env is a gymnasium env")
    if not meta.get("env_id"):
        raise ProximoError(f"{args.run_dir} was trained on an env factory; evaluate it from Python")
    # Atari: the run's frame settings, with whole games and true rewards
    env_kwargs = {**(meta.get("env_kwargs") or {}),
                  "pixels": pixel_options(PPOConfig.from_dict(meta["config"]), training=False)}
    masking = meta.get("config", {}).get("action_masking", "auto")
    returns, lengths = evaluate_policy(policy, meta["env_id"], args.episodes, seed=args.seed,
                                       deterministic=not args.stochastic, env_kwargs=env_kwargs,
                                       action_masking=masking)
    print(f"{meta['env_id']}: return {np.mean(returns):.1f} +- {np.std(returns):.1f} over {len(returns)} episodes "
          f"(length {np.mean(lengths):.0f}, {'stochastic' if args.stochastic else 'deterministic'})")
    if args.video is not None:
        from proximo.video import record_episodes

        for path, episode_return in record_episodes(policy, meta["env_id"], args.video, args.video_episodes,
                                                    seed=args.seed, deterministic=not args.stochastic,
                                                    env_kwargs=env_kwargs, action_masking=masking):
            print(f"video: {path} (return {episode_return:.1f})")
    return 0


def register_plot(subparsers: argparse._SubParsersAction) -> None:
    """Add `proximo plot RUN_DIR [RUN_DIR ...] -o curve.png`."""
    parser = subparsers.add_parser("plot", help="draw learning curves of runs (mean and band over seeds), or of a "
                                                "sweep directory (a curve per setting)")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories, or one `proximo sweep` directory")
    parser.add_argument("-o", "--output", type=Path,
                        help="the PNG (default curve.png; for a sweep directory DIR/curves.png)")
    parser.add_argument("--y", help="metrics.csv column to draw (default: the run's learning curve, "
                                    "episode_return_mean for `proximo train`, reward or accuracy for `proximo llm`)")
    parser.add_argument("--title", help="the figure's title (default: proximo learning curve)")
    parser.set_defaults(handler=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw the runs' curves, or a sweep directory's curve per setting."""
    sweeps = [d for d in args.run_dirs if is_sweep_dir(d)]
    if sweeps:
        if len(args.run_dirs) > 1:
            raise ProximoError(f"{sweeps[0]} is a sweep directory: plot it alone (`proximo plot {sweeps[0]}`)")
        path = plot_sweep(sweeps[0], args.output or sweeps[0] / "curves.png", args.y or "episode_return_mean",
                          args.title)
    else:
        path = plot_runs(args.run_dirs, args.output or Path("curve.png"), args.y, args.title)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn user errors into one line and exit status 2."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.handler(args) or 0)
    except EchoedError:
        return 2  # rank 0 printed this error
    except DistributedError as exc:
        print(f"proximo: error: {exc}", file=sys.stderr)
        return PEER_LOST_EXIT
    except ProximoError as exc:
        print(f"proximo: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:  # an LLM run stopped by a signal, its checkpoint saved
        if os.environ.get("RANK", "0") == "0":
            print(f"proximo: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("proximo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
