"""`proximo sweep`, `proximo tune` and `proximo paper table1`: many runs on Ray from the command line."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from proximo.errors import ConfigError


def add_cluster_flags(parser: argparse.ArgumentParser, pack_default: str = "off") -> None:
    """--workers, --address, --cpus-per-trial, --retries, --progress-every, --pack: how (not what) to run."""
    group = parser.add_argument_group("cluster")
    group.add_argument("--workers", type=int, metavar="N",
                       help="CPUs of the local Ray cluster (default: all of this machine's); not with --address")
    group.add_argument("--address", metavar="auto|HOST:PORT",
                       help="join an existing Ray cluster (`ray start --head` there) instead of starting one")
    group.add_argument("--cpus-per-trial", type=int, default=1, metavar="C",
                       help="CPUs each trial holds; its torch threads match (default 1)")
    group.add_argument("--retries", type=int, default=2, metavar="K",
                       help="extra attempts of a trial whose worker dies (default 2); its own errors are not retried")
    group.add_argument("--progress-every", type=float, default=30.0, metavar="S",
                       help="seconds between plain progress lines when not on a terminal (default 30)")
    group.add_argument("--pack", nargs="?", const="auto", default=pack_default, choices=("off", "auto", "force"),
                       help="train trials that share an env, network shape, n_steps and batch size as batched "
                            "populations, one Ray task each (auto: those that can, the rest alone; force: refuse "
                            f"a grid with trials that cannot; off: one task a trial; default {pack_default})")
    group.add_argument("--max-pack", type=int, default=32, metavar="K",
                       help="at most K trials per population (default 32); a larger group splits evenly")


def run_options(args: argparse.Namespace, title: str) -> Any:
    """RunOptions from the cluster flags, with the command line recorded for results.md."""
    from proximo.sweep.runner import RunOptions

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if getattr(args, "max_pack", 32) < 1:
        raise ConfigError(f"--max-pack must be at least 1, got {args.max_pack}")
    return RunOptions(address=args.address, workers=args.workers, cpus_per_trial=args.cpus_per_trial,
                      retries=args.retries, progress_every_s=args.progress_every, title=title,
                      pack=getattr(args, "pack", "off"), max_pack=getattr(args, "max_pack", 32),
                      command="proximo " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])))


def base_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Fixed config fields of every trial: --preset-file values, then the train flags given."""
    from proximo.cli import config_overrides
    from proximo.config import load_preset_file

    values = load_preset_file(args.preset_file) if args.preset_file else {}
    values.update(config_overrides(args))
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `proximo sweep`, `proximo tune` and `proximo paper`."""
    from proximo.cli import add_config_flags
    from proximo.config import PRESETS

    sweep = subparsers.add_parser(
        "sweep", help="run every combination of a grid x seeds on Ray, each a normal run directory",
        description="Run envs x grid x seeds as Ray tasks under --sweep-dir; re-running the command skips "
                    "finished trials and resumes interrupted ones from their checkpoints.")
    sweep.add_argument("env_ids", nargs="*", metavar="ENV_ID", help="gymnasium ids (or give them in --sweep-file)")
    sweep.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                       help="a config field and its values, e.g. clip_range=0.1,0.2 (repeat for a cross product; "
                            "net_arch values as 64x64)")
    sweep.add_argument("--seeds", default=None, metavar="1-3", help="seeds: a range 1-3 or a list 1,2,5 (default 1)")
    sweep.add_argument("--sweep-file", type=Path, metavar="FILE",
                       help="YAML/JSON with envs, preset, preset_file, config, grid, seeds (flags add to it)")
    sweep.add_argument("--sweep-dir", type=Path, metavar="DIR", required=False, help="where trials and results go")
    sweep.add_argument("--preset", help=f"one of {', '.join(PRESETS)}")
    sweep.add_argument("--preset-file", type=Path, metavar="FILE", help="config fields from a JSON file (best.json)")
    add_cluster_flags(sweep)
    add_config_flags(sweep, skip=("seed",))
    sweep.set_defaults(handler=cmd_sweep)

    from proximo.sweep.tune import register_tune
    register_tune(subparsers)
    from proximo.sweep.table1 import register_paper
    register_paper(subparsers)


def sweep_spec(args: argparse.Namespace) -> Any:
    """The SweepSpec the sweep flags (and --sweep-file) describe."""
    from proximo.sweep.spec import SweepSpec, parse_grid, parse_seeds

    spec = SweepSpec.from_file(args.sweep_file) if args.sweep_file else None
    envs = list(args.env_ids) or (spec.envs if spec else [])
    base = dict(spec.base) if spec else {}
    base.update(base_overrides(args))
    grid = dict(spec.grid) if spec else {}
    for text in args.grid:
        name, values = parse_grid(text)
        if name in base:
            raise ConfigError(f"--grid {name} also has a fixed value ({base[name]!r}); give it one or the other")
        grid[name] = values
    seeds = parse_seeds(args.seeds) if args.seeds is not None else (spec.seeds if spec else [1])
    preset = args.preset or (spec.preset if spec else None)
    return SweepSpec(envs=envs, preset=preset, base=base, grid=grid, seeds=seeds)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the sweep, print where its results are and the grouped summary."""
    from proximo.sweep.runner import check_sweep_dir, run_sweep
    from proximo.sweep.results import grouped

    spec = sweep_spec(args)
    sweep_dir = check_sweep_dir(args.sweep_dir)
    rows = run_sweep(spec, sweep_dir, run_options(args, f"proximo sweep: {', '.join(spec.envs)}"))
    for g in grouped(rows):
        print(f"{g['env_id']}  {g['setting']}  ({g['done']}/{g['seeds']} seeds): eval {g['eval_return_mean']:.1f} "
              f"+- {g['eval_return_mean_std']:.1f}, last-100 training return {g['train_return_last100']:.1f} "
              f"+- {g['train_return_last100_std']:.1f}")
    print(f"results: {sweep_dir / 'results.csv'} and {sweep_dir / 'results.md'}; curves: proximo plot {sweep_dir}")
    bad = [r for r in rows if r["status"] != "done"]
    if bad:
        print(f"proximo: {len(bad)} of {len(rows)} trials did not finish "
              f"({', '.join(sorted({r['status'] for r in bad}))})", file=sys.stderr)
        return 1
    return 0
