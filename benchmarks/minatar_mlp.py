"""MinAtar at the budget of a published PPO result: gymnax-blines' MLP setting (preset `minatar-mlp`, 10M steps),
five games x 3 seeds, each game's seeds one batched population, over as many sittings as it takes; and the same
PPO with MinAtar's own CNN (`--setting cnn`, preset `minatar-cnn`), each seed a solo run (the CNN does not batch
as a population).

    python benchmarks/minatar_mlp.py [--root DIR] [--games Breakout,Asterix] [--jobs 2]
    python benchmarks/minatar_mlp.py --root DIR --report-only      # the table from what is finished so far
    python benchmarks/minatar_mlp.py --root OTHER_DIR --setting cnn --games Breakout,SpaceInvaders

Each game is one population run, ROOT/<game> (`proximo train MinAtar/<Game>-v1 --preset minatar-mlp --seeds 1-3
--env-kwargs ...`), checkpointed every --save-every steps. A game whose agents all wrote summary.json at the
full budget is finished and never trained again (ROOT defaults to benchmarks/results/minatar-runs/<setting>, in the
repository, where each unit keeps only its newest checkpoint, and a finished game none, its agents' policy/ folders
being all the evaluation needs: a sitting on a fresh machine goes on from what an earlier one committed); a game with a population.json but no finish resumes from its
newest checkpoint (`proximo train --resume ROOT/<game>`); others start. --jobs games train at once, one process
(one core) each. Every sitting of a game appends its wall seconds and steps to ROOT/<game>/sittings.jsonl, so
the report sums the wall time honestly across sittings.

The env is the `minatar` package (v1 ids, minimal action sets) with sticky_action_prob 0 and episodes capped at
1,000 steps (gymnax's MinAtar has no sticky actions; its Breakout and Seaquest end at max_steps_in_episode
1000). Freeway keeps the game's own end at 2,500 frames (a cap of 1,000 would cut every episode).

Scores: after training, each agent plays --eval-episodes episodes sampling its actions (as gymnax-blines'
evaluation samples from pi over 164 test rollouts), and the summary's last-100 training return (also sampled).
The published figures beside them: gymnax's README (PPO MLP agents of gymnax-blines, 10M steps): Asterix 15,
Breakout 28, Freeway 58, SpaceInvaders 131; none for Seaquest.

The reference: `--sb3 GAME` trains Stable-Baselines3's PPO with the same settings and MLPs, one seed, in
resumable chunks (`python benchmarks/minatar_mlp.py --root DIR --sb3 Breakout`); the report adds its row.

With --setting cnn every (game, seed) is one solo run, ROOT/<game>/s<seed> (`proximo train ... --preset
minatar-cnn --seed S`, resumed with `--resume`), --jobs of them at once. A ROOT holds one setting (ROOT/setting.json).

Writes benchmarks/results/minatar-{mlp,cnn}.{json,md} (marked partial until all games are finished) and each
finished game's learning curves, benchmarks/results/minatar-{mlp,cnn}-<game>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import comma_choices, machine, write_results  # noqa: E402

GAMES = ("Breakout", "Asterix", "Freeway", "SpaceInvaders", "Seaquest")
PUBLISHED = {"Asterix": 15.0, "Breakout": 28.0, "Freeway": 58.0, "SpaceInvaders": 131.0}  # gymnax README
PRESET = "minatar-mlp"
PRESETS = {"mlp": "minatar-mlp", "cnn": "minatar-cnn"}


def env_kwargs(game: str) -> dict:
    """The MinAtar options that match gymnax's envs (see the module docstring)."""
    kwargs = {"sticky_action_prob": 0.0}
    if game != "Freeway":
        kwargs["max_episode_steps"] = 1000
    return kwargs


def summaries(run: Path, seeds: list[int]) -> list[dict] | None:
    """Every agent's summary.json, or None while any is missing."""
    out = []
    for seed in seeds:
        path = run / f"s{seed}" / "summary.json"
        if not path.is_file():
            return None
        out.append(json.loads(path.read_text()))
    return out


def finished(run: Path, seeds: list[int], steps: int) -> bool:
    """True when every agent wrote its summary at the full budget."""
    done = summaries(run, seeds)
    return done is not None and all(s["global_step"] >= steps for s in done)


def units(games: list[str], args) -> list[tuple[str, int | None]]:
    """What trains as one process: a game's population (seed None) with mlp, a (game, seed) solo run with cnn."""
    if args.setting == "mlp":
        return [(game, None) for game in games]
    return [(game, seed) for game in games for seed in args.seeds]


def unit_run(unit: tuple[str, int | None], args) -> Path:
    """The unit's run directory: ROOT/<game> (a population) or ROOT/<game>/s<seed> (a solo run)."""
    game, seed = unit
    return args.root / game if seed is None else args.root / game / f"s{seed}"


def unit_finished(unit: tuple[str, int | None], args) -> bool:
    """True when the unit's agents all wrote their summaries at the full budget."""
    game, seed = unit
    return finished(args.root / game, args.seeds if seed is None else [seed], args.steps)


def train_command(unit: tuple[str, int | None], args) -> list[str]:
    """The proximo command that starts or resumes a unit (a game's population, or one seed's solo run)."""
    game, seed = unit
    run = unit_run(unit, args)
    base = [sys.executable, "-m", "proximo", "train"]
    start = [f"MinAtar/{game}-v1", "--preset", PRESETS[args.setting], "--total-steps", str(args.steps),
             "--save-every", str(args.save_every), "--keep-checkpoints", "1", "--eval-episodes", "10",
             "--env-kwargs", json.dumps(env_kwargs(game)),
             "--run-dir", str(run), "--quiet", "--no-tensorboard"]
    if seed is None:
        if (run / "population.json").is_file():
            return base + ["--resume", str(run), "--quiet", "--no-tensorboard"]
        return base + start + ["--seeds", f"{args.seeds[0]}-{args.seeds[-1]}"]
    if any(run.glob("checkpoints/step_*")):
        return base + ["--resume", str(run), "--quiet", "--no-tensorboard"]
    if run.exists():  # stopped before its first checkpoint: kept aside, started again
        run.rename(run.with_name(f"{run.name}.unfinished-{int(time.time())}"))
    return base + start + ["--seed", str(seed)]


def steps_done(run: Path, solo: bool = False) -> int:
    """The population's (or with solo, the run's) newest checkpointed or finished step; 0 before any."""
    best = 0
    prefix = "" if solo else "s*/"
    for path in run.glob(f"{prefix}checkpoints/step_*"):
        match = re.fullmatch(r"step_(\d+)", path.name)
        if match:
            best = max(best, int(match.group(1)))
    for path in run.glob(f"{prefix}summary.json"):
        best = max(best, json.loads(path.read_text()).get("global_step", 0))
    return best


def train_games(games: list[str], args) -> bool:
    """Train the unfinished units, --jobs at a time, logging each sitting's wall time in ROOT/<game>/sittings.jsonl;
    False when a SIGINT or SIGTERM stopped the sitting (each unit then saved its checkpoint: proximo stops after
    the current update)."""
    queue = [u for u in units(games, args) if not unit_finished(u, args)]
    running: dict[tuple, tuple[subprocess.Popen, float, int]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stop = []

    def on_signal(signum, frame):  # pass the stop on once; the units checkpoint and exit 128 + signum
        if not stop:
            stop.append(signum)
            for proc, _, _ in running.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while (queue and not stop) or running:
        while queue and not stop and len(running) < args.jobs:
            unit = queue.pop(0)
            run = unit_run(unit, args)
            run.parent.mkdir(parents=True, exist_ok=True)
            command = train_command(unit, args)
            name = unit[0] if unit[1] is None else f"{unit[0]}-s{unit[1]}"
            print(f"minatar_mlp: {name}: {' '.join(command[2:])}", flush=True)
            log = open(args.root / f"{name}.log", "a")
            running[unit] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env),
                             time.time(), steps_done(run, unit[1] is not None))
        time.sleep(5)
        for unit, (proc, started, before) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[unit]
            game, seed = unit
            record = {"start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                      "wall_s": round(time.time() - started, 1), "steps_before": before,
                      "steps_after": steps_done(unit_run(unit, args), seed is not None), "exit": proc.returncode}
            if seed is not None:
                record["seed"] = seed
            with open(args.root / game / "sittings.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"minatar_mlp: {unit}: {record}", flush=True)
            if proc.returncode != 0 and not stop:
                raise SystemExit(f"minatar_mlp: {unit} exited {proc.returncode}; see its log in {args.root}")
    return not stop


def sampled_eval(run: Path, episodes: int) -> tuple[float, float]:
    """Mean and std of `episodes` returns of the run's policy sampling its actions (cached in eval.json)."""
    cache = run / f"eval-stochastic-{episodes}.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        return data["mean"], data["std"]
    out = subprocess.run([sys.executable, "-m", "proximo", "eval", str(run), "--episodes", str(episodes),
                          "--stochastic"], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    match = re.search(r"return (-?[\d.]+) \+- ([\d.]+) over", out)
    if match is None:
        raise SystemExit(f"minatar_mlp: could not read the evaluation of {run}: {out!r}")
    mean, std = float(match.group(1)), float(match.group(2))
    cache.write_text(json.dumps({"mean": mean, "std": std, "episodes": episodes}) + "\n")
    return mean, std


SB3_SETTINGS = dict(learning_rate=5e-4, n_steps=128, batch_size=1024, n_epochs=4, gamma=0.999, gae_lambda=0.95,
                    clip_range=0.2, clip_range_vf=0.2, ent_coef=0.01, vf_coef=0.25, max_grad_norm=0.5)
# SB3's value loss is the plain mean squared error, as proximo's: vf_coef 0.25 is gymnax's 0.5 x 0.5 MSE there too;
# its Adam eps is 1e-5 by default and its MLP init orthogonal, as proximo's.


def sb3_flat_env(game: str):
    """A thunk making proximo's flat-cell MinAtar env with the gymnax-matching options (for SB3's make_vec_env)."""
    from proximo.envs.atari import PixelOptions
    from proximo.envs.make import make_single_env
    return lambda: make_single_env(f"MinAtar/{game}-v1", pixels=PixelOptions(minatar_obs="flat"), **env_kwargs(game))


def train_sb3(game: str, seed: int, args) -> dict:
    """Stable-Baselines3's PPO with the same settings and MLPs, in chunks of --sb3-chunk steps saved after each
    (a new sitting loads the model and goes on; its envs restart their episodes, the only difference from one
    uninterrupted run). Returns the finished run's figures (cached in ROOT/sb3-<game>-s<seed>/result.json)."""
    import numpy as np
    import torch
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.env_util import make_vec_env
    from torch import nn

    torch.set_num_threads(1)
    folder = args.root / f"sb3-{game}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    result_path, progress_path, model_path = folder / "result.json", folder / "progress.json", folder / "model.zip"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else {"steps": 0, "wall_s": 0.0,
                                                                                      "sittings": 0}
    venv = make_vec_env(sb3_flat_env(game), n_envs=64, seed=seed + 1000 * progress["sittings"])
    if model_path.is_file():
        model = SB3PPO.load(model_path, env=venv, device="cpu")
    else:
        model = SB3PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **SB3_SETTINGS,
                       policy_kwargs=dict(net_arch=dict(pi=[256, 256], vf=[256, 256]), activation_fn=nn.ReLU))
    progress["sittings"] += 1
    last100 = float("nan")
    while model.num_timesteps < args.steps:
        started = time.time()
        model.learn(total_timesteps=min(args.sb3_chunk, args.steps - model.num_timesteps), reset_num_timesteps=False)
        learned = time.time()  # the training loop's seconds, the save outside (as proximo's sps)
        if model.ep_info_buffer:
            last100 = float(np.mean([e["r"] for e in model.ep_info_buffer]))
        model.save(folder / "model.tmp.zip")
        os.replace(folder / "model.tmp.zip", model_path)  # atomic: an interruption never leaves half a model
        progress.update(steps=int(model.num_timesteps), wall_s=progress["wall_s"] + learned - started,
                        last100=last100)
        progress_path.write_text(json.dumps(progress) + "\n")
        print(f"minatar_mlp: sb3 {game} s{seed}: {model.num_timesteps:,} steps, last-100 {last100:.2f}", flush=True)
    env = sb3_flat_env(game)()
    returns = []
    for episode in range(args.eval_episodes):
        obs, _ = env.reset(seed=10_000 + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=False)  # sampled, as the proximo side's evaluation
            obs, reward, terminated, truncated, _ = env.step(int(action))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    result = {"game": game, "seed": seed, "steps": int(model.num_timesteps), "train_last100": progress["last100"],
              "eval_sampled": float(np.mean(returns)), "eval_sampled_std": float(np.std(returns)),
              "wall_s": progress["wall_s"], "sittings": progress["sittings"],
              "steps_per_s": model.num_timesteps / max(progress["wall_s"], 1e-9)}
    result_path.write_text(json.dumps(result) + "\n")
    return result


def speed(args) -> None:
    """Steps/s of the same setting side by side, sides alternating per repeat: proximo alone (the NumPy learner
    auto picks), proximo's 3-seed population (agent-steps/s), and SB3 alone; --speed-steps steps each, fresh
    processes, training loop only (start-up and evaluation outside). Writes benchmarks/results/minatar-mlp-sps."""
    import tempfile
    game, steps = args.games.split(",")[0], args.speed_steps
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for repeat in range(args.speed):
        with tempfile.TemporaryDirectory() as tmp:
            for side in ("proximo", "population", "sb3"):
                if side == "sb3":
                    out = subprocess.run([sys.executable, __file__, "--root", tmp, "--sb3", game, "--steps",
                                          str(steps), "--sb3-chunk", str(steps), "--eval-episodes", "1",
                                          "--no-report"],
                                         capture_output=True, text=True, check=True, env=env).stdout
                    rate = json.loads(out.splitlines()[-1])["steps_per_s"]
                else:
                    run = Path(tmp) / side
                    command = [sys.executable, "-m", "proximo", "train", f"MinAtar/{game}-v1", "--preset", PRESET,
                               "--total-steps", str(steps), "--eval-episodes", "1", "--quiet", "--no-tensorboard",
                               "--run-dir", str(run), "--env-kwargs", json.dumps(env_kwargs(game))]
                    if side == "population":
                        command += ["--seeds", "1-3"]
                    subprocess.run(command, check=True, env=env, capture_output=True)
                    summary = json.loads((run / ("s1" if side == "population" else ".") / "summary.json").read_text())
                    rate = summary["sps"] * (3 if side == "population" else 1)
                rows.append({"repeat": repeat + 1, "side": side, "steps_per_s": rate})
                print(json.dumps(rows[-1]), flush=True)
    median = {side: statistics.median(r["steps_per_s"] for r in rows if r["side"] == side)
              for side in ("proximo", "population", "sb3")}
    lines = [f"# MinAtar {game}, `{PRESET}` (gymnax-blines' MLP setting): steps/s, proximo vs SB3", "",
             f"Command: `python benchmarks/minatar_mlp.py --root DIR --games {game} --speed {args.speed} "
             f"--speed-steps {steps}`", "",
             f"{steps:,} steps per run, one thread, fresh process per run, sides alternating; training loop only. "
             "population: seeds 1-3 as one batched population, agent-steps/s summed over its 3 agents.", "",
             "| repeat | proximo | proximo population (3 agents) | SB3 |", "|---|---|---|---|"]
    for repeat in range(args.speed):
        cell = {r["side"]: r["steps_per_s"] for r in rows if r["repeat"] == repeat + 1}
        lines.append(f"| {repeat + 1} | {cell['proximo']:,.0f} | {cell['population']:,.0f} | {cell['sb3']:,.0f} |")
    lines += ["", f"Medians: proximo {median['proximo']:,.0f}, population {median['population']:,.0f}, SB3 "
              f"{median['sb3']:,.0f}; proximo / SB3 = {median['proximo'] / median['sb3']:.2f}x, population / SB3 = "
              f"{median['population'] / median['sb3']:.2f}x."]
    write_results(HERE / "results" / "minatar-mlp-sps", {"game": game, "steps": steps, "rows": rows,
                                                          "median": median, "machine": machine()},
                  "\n".join(lines) + "\n")


def nan_if_none(value) -> float:
    """A summary figure as a float (nan where the run logged none, e.g. no episode finished)."""
    return float("nan") if value is None else float(value)


def logged_steps(agent: Path) -> int:
    """The global_step of an agent's last metrics.csv row (0 without one)."""
    rows = (agent / "metrics.csv").read_text().splitlines() if (agent / "metrics.csv").is_file() else []
    return int(rows[-1].split(",", 1)[0]) if len(rows) > 1 else 0


def report(games: list[str], args, command: str) -> None:
    """The table over the finished games (partial until all five are)."""
    rows, done = [], []
    for game in games:
        run = args.root / game
        if not finished(run, args.seeds, args.steps):
            continue
        done.append(game)
        for seed in args.seeds:  # a finished agent never resumes: its policy/ folder is all eval needs
            shutil.rmtree(run / f"s{seed}" / "checkpoints", ignore_errors=True)
        curve = HERE / "results" / f"minatar-{args.setting}-{game.lower()}.png"
        if not curve.is_file():  # the learning curves, mean and spread over the seeds (`proximo plot`)
            subprocess.run([sys.executable, "-m", "proximo", "plot", *(str(run / f"s{seed}") for seed in args.seeds),
                            "-o", str(curve), "--title", f"MinAtar {game}, {PRESETS[args.setting]}, seeds "
                            f"{args.seeds[0]}-{args.seeds[-1]}"], check=True, capture_output=True)
        sittings = [json.loads(line) for line in (run / "sittings.jsonl").read_text().splitlines()] \
            if (run / "sittings.jsonl").is_file() else []
        for seed, summary in zip(args.seeds, summaries(run, args.seeds)):
            mean, std = sampled_eval(run / f"s{seed}", args.eval_episodes)
            rows.append({"game": game, "seed": seed, "steps": summary["global_step"],
                         "train_last100": nan_if_none(summary.get("train_return_last100_mean")), "eval_sampled": mean,
                         "eval_sampled_std": std, "eval_deterministic": summary["eval_return_mean"],
                         "agent_steps_per_s": summary.get("sps"),
                         "game_wall_s": sum(s["wall_s"] for s in sittings), "sittings": len(sittings)})
    preset = PRESETS[args.setting]
    setting = "MLP setting" if args.setting == "mlp" else "PPO settings with MinAtar's CNN"
    lines = [f"# MinAtar, gymnax-blines' {setting} (`{preset}`), {args.steps:,} steps, seeds "
             f"{args.seeds[0]}-{args.seeds[-1]}", ""]
    if len(done) < len(games):
        lines += [f"**Partial: {len(done)} of {len(games)} games finished** ({', '.join(done) or 'none'}); "
                  "`python benchmarks/minatar_mlp.py --root DIR` goes on from the checkpoints.", ""]
    lines += [f"Command: `{command}`", "",
              ("Each game's seeds train as one batched population in one process (one core). " if args.setting == "mlp"
               else "Each seed trains as a solo run in its own process (one core). ")
              + "Env: the `minatar` "
              "package, sticky_action_prob 0, episodes capped at 1,000 steps except Freeway (gymnax's MinAtar: no "
              "sticky actions). Scores: sampled-action evaluation over "
              f"{args.eval_episodes} episodes per agent (gymnax-blines samples from pi over 164 test rollouts), "
              "the last-100 training return (sampled), and the deterministic 10-episode evaluation at the end. "
              "Published: gymnax README, PPO MLP agents of gymnax-blines at 10M steps.", "",
              "| game | sampled eval (mean +- std over seeds) | last-100 train | deterministic eval | published "
              "(gymnax) | core h (sum of sittings) |", "|---|---|---|---|---|---|"]
    for game in done:
        mine = [r for r in rows if r["game"] == game]
        evals = [r["eval_sampled"] for r in mine]
        spread = statistics.stdev(evals) if len(evals) > 1 else 0.0
        lines.append(f"| {game} | {statistics.mean(evals):.1f} +- {spread:.1f} | "
                     f"{statistics.mean(r['train_last100'] for r in mine):.1f} | "
                     f"{statistics.mean(r['eval_deterministic'] for r in mine):.1f} | "
                     f"{PUBLISHED.get(game, '-')} | {mine[0]['game_wall_s'] / 3600:.2f} |")
    lines += ["", "Learning curves: " + ", ".join(f"[{g}](minatar-{args.setting}-{g.lower()}.png)" for g in done) + "."]
    for game in done:  # a game whose logs stop short of its training says so, with its NOTE.md if it has one
        logged = min(logged_steps(args.root / game / f"s{seed}") for seed in args.seeds)
        if logged < args.steps:
            note = args.root / game / "NOTE.md"
            lines += ["", f"{game}'s curve stops at {logged:,} of its {args.steps:,} steps: its agents' metrics.csv "
                      "holds no later row." + (" " + note.read_text().strip() if note.is_file() else "")]
    lines += ["", "Per agent:", "", "| game | seed | sampled eval | last-100 train | deterministic eval | "
              "agent-steps/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['game']} | {r['seed']} | {r['eval_sampled']:.1f} +- {r['eval_sampled_std']:.1f} | "
                     f"{r['train_last100']:.1f} | {r['eval_deterministic']:.1f} | {r['agent_steps_per_s'] or 0:,.0f} |")
    sb3 = [json.loads(p.read_text()) for p in sorted(args.root.glob("sb3-*/result.json"))]
    if sb3:
        lines += ["", "Stable-Baselines3's PPO, the same settings and MLPs, one seed (the reference; a proximo agent "
                  "runs as part of a 3-agent population, SB3 alone):", "",
                  "| game | seed | steps | sampled eval | last-100 train | steps/s | wall h (sittings) |",
                  "|---|---|---|---|---|---|---|"]
        for r in sb3:
            lines.append(f"| {r['game']} | {r['seed']} | {r['steps']:,} | {r['eval_sampled']:.1f} +- "
                         f"{r['eval_sampled_std']:.1f} | {r['train_last100']:.1f} | {r['steps_per_s']:,.0f} | "
                         f"{r['wall_s'] / 3600:.2f} ({r['sittings']}) |")
    total = sum({r["game"]: r["game_wall_s"] for r in rows}.values())
    lines += ["", f"Core-hours of the finished games, summed over every sitting of every process (one process, one "
              f"core): {total / 3600:.2f} h; --jobs processes ran at once on 2 cores. These are wall hours: where other jobs "
              "shared the cores (see each agent's agent-steps/s against a quiet process's) they overstate the CPU time."]
    write_results(HERE / "results" / f"minatar-{args.setting}", {"setting": args.setting, "preset": preset, "command": command, "machine": machine(), "steps": args.steps,
                                                      "seeds": args.seeds, "games_done": done, "rows": rows,
                                                      "published": PUBLISHED, "sb3": sb3},
                  "\n".join(lines) + "\n")
    print(f"minatar_mlp: report over {len(done)} finished games written", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Train what is unfinished, then write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="where the runs live; default benchmarks/results/minatar-runs/"
                        "<setting>, kept in the repository so that a later sitting on a fresh machine resumes them")
    parser.add_argument("--games", default=",".join(GAMES), help="comma list of " + ", ".join(GAMES))
    parser.add_argument("--seeds", default="1-3", help="first-last seed (one population per game)")
    parser.add_argument("--steps", type=int, default=10_000_000)
    parser.add_argument("--save-every", type=int, default=500_000)
    parser.add_argument("--eval-episodes", type=int, default=164)
    parser.add_argument("--setting", choices=tuple(PRESETS), default="mlp",
                        help="mlp: gymnax-blines' MLPs, seeds batched (minatar-mlp); cnn: MinAtar's CNN, solo runs "
                        "(minatar-cnn)")
    parser.add_argument("--jobs", type=int, default=2, help="games trained at once (one process each)")
    parser.add_argument("--report-only", action="store_true", help="write the table from the finished games only")
    parser.add_argument("--sb3", metavar="GAME", help="instead: train SB3's PPO on GAME (seed --sb3-seed) to --steps, "
                        "in resumable chunks, then write the report")
    parser.add_argument("--sb3-seed", type=int, default=1)
    parser.add_argument("--speed", type=int, metavar="REPEATS", help="instead: time proximo, its population and SB3 "
                        "side by side on the first of --games, REPEATS alternating rounds")
    parser.add_argument("--speed-steps", type=int, default=196_608)
    parser.add_argument("--no-report", action="store_true", help="leave benchmarks/results alone (--speed's runs)")
    parser.add_argument("--sb3-chunk", type=int, default=491_520, help="SB3 steps between saves (60 rollouts)")
    args = parser.parse_args(argv)
    games = comma_choices(args.games, GAMES, "minatar_mlp")
    first, _, last = args.seeds.partition("-")
    args.seeds = list(range(int(first), int(last or first) + 1))
    args.root = (args.root or HERE / "results" / "minatar-runs" / args.setting).resolve()
    # the command as run, with the machine's runs folder as DIR
    command = (f"python benchmarks/minatar_mlp.py --root DIR --games {','.join(games)} --seeds {args.seeds[0]}-"
               f"{args.seeds[-1]} --steps {args.steps} --eval-episodes {args.eval_episodes}"
               + (" --setting cnn" if args.setting == "cnn" else ""))
    marker = args.root / "setting.json"
    if marker.is_file() and json.loads(marker.read_text())["setting"] != args.setting:
        print(f"minatar_mlp: {args.root} holds the {json.loads(marker.read_text())['setting']} setting's runs; give "
              f"--setting that, or another --root for {args.setting}", file=sys.stderr)
        return 2
    if (args.speed or args.sb3) and args.setting != "mlp":
        print("minatar_mlp: --speed and --sb3 measure the mlp setting; leave out --setting cnn", file=sys.stderr)
        return 2
    args.root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"setting": args.setting}) + "\n")
    if args.speed:
        speed(args)
        return 0
    if args.sb3 is not None:
        comma_choices(args.sb3, GAMES, "minatar_mlp")
        print(json.dumps(train_sb3(args.sb3, args.sb3_seed, args)), flush=True)
    elif not args.report_only and not train_games(games, args):
        print("minatar_mlp: stopped; the games saved their checkpoints and resume on the next run", flush=True)
        return 1
    if not args.no_report:
        report(games, args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
