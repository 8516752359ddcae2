"""`proximo tune`: hyperparameter search with Optuna's TPE run through Ray Tune, ASHA stopping bad trials early.

Each Tune trial trains a normal proximo run directory (DIR/runs/<trial id>) and reports the mean return of the
last 100 training episodes after every update; ASHA compares trials at equal env steps and stops the worse
ones. The best trial's config is written as a preset file that `proximo train --preset-file` loads.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proximo.checkpoint import atomic_write_bytes, atomic_write_json
from proximo.config import PRESETS, PPOConfig, field_types, make_config
from proximo.extras import need
from proximo.errors import ConfigError
from proximo.flags import add_config_flags
from proximo.sweep.cluster import connect, import_ray
from proximo.sweep.options import add_cluster_flags, base_overrides, run_options
from proximo.sweep.spec import config_field, parse_value
from proximo.sweep.trial import run_trial

KINDS = ("uniform", "loguniform", "int", "logint", "choice")
METRIC = "train_return_last100"


@dataclass(frozen=True)
class Dimension:
    """One searched field: its kind (uniform, loguniform, int, logint, choice) and its bounds or choices."""

    name: str
    kind: str
    values: tuple

    def to_tune(self):
        """The Ray Tune search-space object for this dimension."""
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "int":
            return tune.randint(self.values[0], self.values[1] + 1)  # randint's upper bound is exclusive
        if self.kind == "logint":
            return tune.lograndint(self.values[0], self.values[1] + 1)
        return tune.choice(list(self.values))


def parse_space(text: str) -> Dimension:
    """'learning_rate=loguniform(1e-5,1e-2)' -> Dimension; kinds: uniform, loguniform, int, logint, choice."""
    match = re.fullmatch(r"\s*([A-Za-z_][\w-]*)\s*=\s*(\w+)\s*\((.*)\)\s*", text)
    if match is None:
        raise ConfigError(f"--space {text!r} needs the form field=kind(args), e.g. learning_rate=loguniform(1e-5,1e-2) "
                          f"(kinds: {', '.join(KINDS)})")
    name, kind, inner = config_field(match.group(1), "--space"), match.group(2), match.group(3)
    if kind not in KINDS:
        raise ConfigError(f"--space {name}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    parts = [p.strip() for p in inner.split(",") if p.strip()]
    hint = field_types()[name]
    if kind == "choice":
        if not parts:
            raise ConfigError(f"--space {name}=choice() has no values; give at least one")
        return Dimension(name, kind, tuple(parse_value(name, p, "--space") for p in parts))
    if len(parts) != 2:
        raise ConfigError(f"--space {name}={kind}(...) takes two bounds, low and high; got {len(parts)}")
    numeric = int if kind in ("int", "logint") else float
    if kind in ("int", "logint") and hint is not int:
        raise ConfigError(f"--space {name}: {kind}() draws integers but {name} is not an integer field; "
                          "use uniform() or loguniform()")
    if kind in ("uniform", "loguniform") and hint not in (float, float | None):
        raise ConfigError(f"--space {name}: {kind}() draws reals but {name} is not a real-valued field; "
                          "use int() or choice()")
    try:
        low, high = (numeric(float(p)) if numeric is int and float(p).is_integer() else numeric(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--space {name}={kind}({inner}): bounds must be "
                          f"{'integers' if numeric is int else 'numbers'}") from None
    if not low < high:
        raise ConfigError(f"--space {name}: the low bound {low} must be below the high bound {high}")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(f"--space {name}: {kind}() needs a positive low bound, got {low}")
    return Dimension(name, kind, (low, high))


def _trainable(params: dict[str, Any], fixed: dict[str, Any]) -> None:
    """One Tune trial: train a proximo run with the sampled fields and report after every update."""
    from ray import tune

    config = {**fixed["config"], **params}
    config = make_config(None, **config).to_dict()  # an impossible combination fails as one ConfigError
    run_dir = Path(fixed["dir"]) / "runs" / tune.get_context().get_trial_id()

    def report(row: dict[str, Any]) -> None:
        value = row.get("episode_return_mean")
        if value is not None and math.isfinite(value):
            tune.report({METRIC: float(value), "global_step": int(row["global_step"])})

    summary = run_trial(fixed["env_id"], config, str(run_dir), reporter=report)
    value = summary.get("train_return_last100_mean")
    tune.report({METRIC: float(value) if value is not None else -math.inf, "global_step": summary["global_step"],
                 "eval_return_mean": summary.get("eval_return_mean"), "run_dir": str(run_dir)})


def run_tune(env_id: str, preset: str | None, base: dict[str, Any], space: list[Dimension], trials: int,
             tune_dir: Path, options, grace_fraction: float = 0.25, seed: int = 1) -> dict[str, Any]:
    """Search `space` with Optuna TPE through Ray Tune (ASHA on the training return); returns the best trial.

    base: the fields fixed by flags or a preset file, over the preset's values.
    """
    import_ray()
    need("optuna", "proximo tune")
    try:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:
        raise ConfigError(f"proximo tune needs Ray Tune and Optuna ({exc}); install them with "
                          "`pip install -e '.[ray]'`") from None
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    names = [d.name for d in space]
    if not space:
        raise ConfigError("give at least one --space, e.g. --space 'learning_rate=loguniform(1e-5,1e-2)'")
    if len(set(names)) != len(names):
        raise ConfigError(f"--space names a field more than once: {names}")
    config = make_config(preset, env_id, **base).to_dict()  # the fixed part (and the env's preset entry), validated
    total = config["total_steps"]
    rollout = config["num_envs"] * config["n_steps"]
    if "torch_threads" not in base:
        config["torch_threads"] = options.cpus_per_trial
    if not config["save_every"]:  # a trial that Tune restores resumes from its newest checkpoint
        from proximo.sweep.runner import periodic_save_every  # here: the runner imports the env makers

        config["save_every"] = periodic_save_every(config)
    tune_dir = Path(tune_dir).absolute()
    tune_dir.mkdir(parents=True, exist_ok=True)
    owned = not import_ray().is_initialized()
    ray = connect(options.address, options.workers, options.cpus_per_trial)
    try:
        fixed = {"env_id": env_id, "config": config, "dir": str(tune_dir)}
        trainable = tune.with_resources(tune.with_parameters(_trainable, fixed=fixed), {"cpu": options.cpus_per_trial})
        experiment = tune_dir / "tune"
        if tune.Tuner.can_restore(str(experiment)):
            print(f"proximo: resuming the search in {experiment}", file=sys.stderr)
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
        else:
            scheduler = ASHAScheduler(time_attr="global_step", max_t=total,
                                      grace_period=max(rollout, int(total * grace_fraction)), reduction_factor=2)
            searcher = OptunaSearch(seed=seed)  # Optuna's default sampler: TPE
            tuner = tune.Tuner(
                trainable,
                param_space={d.name: d.to_tune() for d in space},
                tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                                            num_samples=trials),
                run_config=tune.RunConfig(name="tune", storage_path=str(tune_dir), verbose=0,
                                          callbacks=[_trial_printer(tune, names)],
                                          failure_config=tune.FailureConfig(max_failures=options.retries)))
        results = tuner.fit()
    finally:
        if owned:
            ray.shutdown()
    return summarize(results, env_id, config, names, total, tune_dir)


def _trial_printer(tune, names: list[str]):
    """A Tune callback that prints one line per finished trial (Tune's own tables are turned off)."""
    class TrialLines(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            params = ", ".join(f"{n}={_short(trial.config.get(n))}" for n in names)
            value = result.get(METRIC)
            print(f"proximo: trial {trial.trial_id}: {params} -> last-100 training return "
                  f"{value if value is None else round(value, 1)} at {result.get('global_step', 0):,} steps",
                  file=sys.stderr, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"proximo: trial {trial.trial_id} failed: {str(getattr(trial, 'error_msg', None) or '').strip().splitlines()[-1:]}",
                  file=sys.stderr, flush=True)
    return TrialLines()


def summarize(results, env_id: str, config: dict[str, Any], names: list[str], total: int, tune_dir: Path
              ) -> dict[str, Any]:
    """Pick the best trial that trained all its steps (ASHA stopped the others early) and write the files."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        params = dict(result.config or {})
        rows.append({"params": params, "value": metrics.get(METRIC), "global_step": metrics.get("global_step", 0),
                     "error": str(result.error).strip().splitlines()[-1] if result.error else None})
    complete = [r for r in rows if r["value"] is not None and r["global_step"] >= total and not r["error"]]
    pool = complete or [r for r in rows if r["value"] is not None]
    if not pool:
        raise ConfigError(f"no trial of the search reported a return (errors: "
                          f"{sorted({r['error'] for r in rows if r['error']})[:2]}); see {tune_dir}")
    best = max(pool, key=lambda r: r["value"])
    best_config = PPOConfig.from_dict({**config, **best["params"]}).to_dict()
    # Every field (not only those off the defaults), so the file means the same with or without a --preset beside it.
    preset = {key: value for key, value in best_config.items() if key not in ("seed", "torch_threads")}
    data = {"_what": f"best of {len(rows)} proximo tune trials on {env_id} "
                     f"(last-100 training return {best['value']:.1f} at {best['global_step']:,} steps); load with "
                     f"`proximo train {env_id} --preset-file best.json`",
            "env_id": env_id, "searched": names, "best": best, "config": preset}
    atomic_write_json(tune_dir / "best.json", data)
    lines = [f"# proximo tune on {env_id}", "", f"{len(rows)} trials, {len(complete)} trained all {total:,} steps "
             "(ASHA stopped the rest early). Metric: mean return of the last 100 training episodes.", "",
             "| " + " | ".join(names) + " | steps | last-100 return | error |", "|" + "---|" * (len(names) + 3)]
    for row in sorted(rows, key=lambda r: -(r["value"] if r["value"] is not None else -math.inf)):
        cells = [_short(row["params"].get(n)) for n in names]
        value = f"{row['value']:.1f}" if row["value"] is not None else ""
        lines.append(f"| {' | '.join(cells)} | {row['global_step']:,} | {value} | {row['error'] or ''} |")
    atomic_write_bytes(tune_dir / "results.md", ("\n".join(lines) + "\n").encode())
    return data


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def register_tune(subparsers: argparse._SubParsersAction) -> None:
    """Add `proximo tune`."""

    parser = subparsers.add_parser("tune", help="search hyperparameters (Optuna TPE on Ray Tune, ASHA early stop)")
    parser.add_argument("env_id", help="gymnasium id, e.g. CartPole-v1")
    parser.add_argument("--space", action="append", default=[], metavar="FIELD=KIND(ARGS)",
                        help="a searched field, e.g. learning_rate=loguniform(1e-5,1e-2), n_epochs=int(3,20), "
                             "objective=choice(clip,adaptive_kl); repeat for more")
    parser.add_argument("--trials", type=int, default=20, help="trials to sample (default 20)")
    parser.add_argument("--tune-dir", type=Path, default=Path("runs/tune"), help="where trials and best.json go")
    parser.add_argument("--output", type=Path, help="also copy best.json here")
    parser.add_argument("--grace", type=float, default=0.25,
                        help="fraction of total_steps every trial trains before ASHA may stop it (default 0.25)")
    parser.add_argument("--search-seed", type=int, default=1, help="seed of the TPE sampler")
    parser.add_argument("--preset", help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--preset-file", type=Path, metavar="FILE", help="config fields from a JSON file")
    add_cluster_flags(parser)
    add_config_flags(parser)
    parser.set_defaults(handler=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    """Run the search and print the best config and where its preset file is."""
    import json

    from proximo.envs.make import make_single_env  # here: every `proximo` command builds this parser

    space = [parse_space(text) for text in args.space]
    if not 0 < args.grace <= 1:
        raise ConfigError(f"--grace must lie in (0, 1], got {args.grace}")
    base = base_overrides(args)
    names = [d.name for d in space]
    clash = sorted(set(names) & set(base))
    if clash:
        raise ConfigError(f"--space {clash[0]} also has a fixed value (a flag or the preset file); give it one or "
                          "the other")
    make_config(args.preset, args.env_id, **base)  # a bad fixed value: one line before Ray starts
    make_single_env(args.env_id).close()  # a wrong env id: one line here, not one per trial
    best = run_tune(args.env_id, args.preset, base, space, args.trials, args.tune_dir,
                    run_options(args, f"proximo tune {args.env_id}"), args.grace, args.search_seed)
    if args.output:
        atomic_write_json(args.output, json.loads((Path(args.tune_dir) / "best.json").read_text()))
    print(f"best: {', '.join(f'{k}={_short(v)}' for k, v in best['best']['params'].items())} -> last-100 training "
          f"return {best['best']['value']:.1f} at {best['best']['global_step']:,} steps")
    print(f"preset file: {Path(args.tune_dir) / 'best.json'}"
          + (f" and {args.output}" if args.output else "")
          + f"; train with `proximo train {args.env_id} --preset-file {args.output or Path(args.tune_dir) / 'best.json'}`")
    return 0
