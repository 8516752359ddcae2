"""`proximo sweep`, `proximo tune` and `proximo paper table1`: many runs on Ray from the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proximo.config import PRESETS
from proximo.errors import ConfigError
from proximo.flags import add_config_flags
from proximo.sweep.results import grouped
from proximo.sweep.spec import SweepSpec, parse_grid, parse_seeds
from proximo.sweep.options import add_cluster_flags, base_overrides, run_options  # noqa: F401 - imported from here too
from proximo.sweep.table1 import register_paper
from proximo.sweep.tune import register_tune


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `proximo sweep`, `proximo tune` and `proximo paper`."""
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

    register_tune(subparsers)
    register_paper(subparsers)


def sweep_spec(args: argparse.Namespace) -> Any:
    """The SweepSpec the sweep flags (and --sweep-file) describe."""
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
    # here: every `proximo` command builds this parser, and the runner imports the env makers
    from proximo.sweep.runner import check_sweep_dir, run_sweep

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
