"""The flags every many-run command shares (`proximo sweep`, `tune`, `paper table1`): how to run on the cluster
(--workers, --address, --pack ...) and what they become, RunOptions; the fixed config of every trial."""
from __future__ import annotations

import argparse
import shlex
from typing import Any

from proximo.config import load_preset_file
from proximo.errors import ConfigError
from proximo.flags import config_overrides


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
    # here: every `proximo` command builds these flags, and the runner imports the env makers
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
    values = load_preset_file(args.preset_file) if args.preset_file else {}
    values.update(config_overrides(args))
    return values
