"""Recurrent PPO at rl-baselines3-zoo's budget and settings: proximo's LSTM beside sb3-contrib's RecurrentPPO.

Two tasks, 100k steps each as in rl-zoo's hyperparams/ppo_lstm.yml (commit 038ab16):
- CartPoleNoVel-v1: 8 envs x 32 steps, batch 256, 20 epochs, gamma 0.98, lambda 0.8, lr and clip
  annealed linearly from 1e-3 and 0.2, no entropy bonus; the default MlpLstmPolicy (LSTM 256 for the
  actor and another for the critic, then [64, 64] tanh MLPs, orthogonal init).
- PendulumNoVel-v1: 4 envs x 1024 steps, batch 64 (PPO's default), 10 epochs, gamma 0.9, lambda 0.95,
  lr 1e-3, clip 0.2, and gSDE (use_sde, sde_sample_freq 4) for both libraries (log std 0 at the start, SB3's
  default). Until proximo had gSDE its side sampled plain Gaussian actions; those rows stay in the JSON without
  the `proximo` field and are no longer tabled (see current()).
proximo trains on proximo/CartPoleNoVel-v1 and proximo/PendulumNoVel-v1 (proximo/envs/tasks.py); so does
sb3-contrib, through the same gymnasium ids. rl-zoo's figures (benchmark.md of rl-baselines3-zoo: 500.000
+- 0.000 and -217.933 +- 140.094) are one trained agent's mean +- std over evaluation episodes, not over seeds.

Every trial runs in its own process with one torch thread; at most --jobs trials run at once. Each
finished trial is appended to OUT.json at once, so a run that is stopped resumes where it was: trials
already in the file are skipped. OUT.md is rewritten after each trial: mean +- std over seeds of the
mean deterministic evaluation return (--eval-episodes episodes per seed, seeds 10_000 + 1000 seed + i),
and steps/s (env steps over learn()'s wall time).

    python benchmarks/recurrent_zoo.py [--seeds 5] [--tasks cartpole,pendulum] [--libs proximo,sb3-contrib]

Other tasks: cartpole-round2 (round 2's 30k-step setting, a smaller network), and issue 29's gap search,
cartpole-30k and cartpole-30k-ortho-lstm (rl-zoo's CartPoleNoVel network at 30k steps, proximo's LSTM drawn
with PyTorch's default init as sb3-contrib's is, or orthogonally):

    python benchmarks/recurrent_zoo.py --seeds 8 --tasks cartpole-30k,cartpole-30k-ortho-lstm --libs proximo \
        --jobs 1 --out benchmarks/results/recurrent_gap

The agents whose scores benchmark.md lists were not trained with the yml's settings alone: their model cards
(sb3/ppo_lstm-CartPoleNoVel-v1 and sb3/ppo_lstm-PendulumNoVel-v1 on the Hugging Face hub, section
Hyperparameters) add observation normalization (VecNormalize, norm_obs True, norm_reward False) and a smaller
network (LSTM 64, ReLU, [64] for each head, ortho_init False, a critic LSTM of its own). cartpole-zoo-agent and
pendulum-zoo-agent are those settings, for both libraries:

    python benchmarks/recurrent_zoo.py --seeds 5 --tasks cartpole-zoo-agent,pendulum-zoo-agent --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ZOO_SOURCE = ("rl-baselines3-zoo hyperparams/ppo_lstm.yml (settings) and benchmark.md (scores: one agent, mean "
              "+- std over 300 CartPoleNoVel and 750 PendulumNoVel evaluation episodes)")
# rl-zoo's hyperparams/ppo_lstm.yml; sb3-contrib's MlpLstmPolicy defaults fill in the network.
TASKS = {
    "cartpole": dict(env="proximo/CartPoleNoVel-v1", zoo="CartPoleNoVel-v1", zoo_score="500.00 +- 0.00",
                     steps=100_000, num_envs=8, n_steps=32, batch_size=256, gamma=0.98, gae_lambda=0.8,
                     n_epochs=20, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, anneal=True, sde=False),
    "pendulum": dict(env="proximo/PendulumNoVel-v1", zoo="PendulumNoVel-v1", zoo_score="-217.93 +- 140.09",
                     steps=100_000, num_envs=4, n_steps=1024, batch_size=64, gamma=0.9, gae_lambda=0.95,
                     n_epochs=10, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, anneal=False, sde=True,
                     proximo=dict(use_sde=True, sde_sample_freq=4)),
}
NETWORK = dict(rnn_hidden=256, net_arch=[64, 64], activation="tanh", ortho_init=True)  # MlpLstmPolicy's defaults
# Round 2's comparison (benchmarks/memory_masking.py, results/memory_recurrent.md): rl-zoo's CartPoleNoVel
# optimization settings at 30k steps with a smaller network of its own; kept to measure its gap over more seeds.
TASKS["cartpole-round2"] = dict(TASKS["cartpole"], steps=30_000, zoo_score="(not an rl-zoo setting)",
                                network=dict(rnn_hidden=64, net_arch=[64], activation="relu", ortho_init=False))
# Issue 29's search for the gap (results/recurrent_gap.md): rl-zoo's CartPoleNoVel setting and network cut to
# 30k steps, proximo's LSTM initialized as sb3-contrib leaves it (PyTorch's default) or orthogonally. A task
# with "proximo" overrides changes only proximo's side; its "baseline" names the task it is compared with.
TASKS["cartpole-30k"] = dict(TASKS["cartpole"], steps=30_000, zoo_score="(not an rl-zoo setting)",
                             proximo=dict(rnn_init="torch_default"))
TASKS["cartpole-30k-ortho-lstm"] = dict(TASKS["cartpole-30k"], proximo=dict(rnn_init="orthogonal"),
                                        baseline="cartpole-30k")
# The settings of the agents benchmark.md scores, from their hub model cards (see the module doc): the yml's, plus
# observation normalization and this network.
ZOO_AGENT_NETWORK = dict(rnn_hidden=64, net_arch=[64], activation="relu", ortho_init=False)
for _task in ("cartpole", "pendulum"):
    TASKS[f"{_task}-zoo-agent"] = dict(TASKS[_task], network=ZOO_AGENT_NETWORK, normalize_obs=True, zoo_row=True)
TASKS["cartpole"]["zoo_row"] = TASKS["pendulum"]["zoo_row"] = True
# Issue 29's PendulumNoVel gap: the one difference left between the two updates is how a rollout is cut into
# 64-step minibatches. sb3-contrib rolls the env-major rollout by a random offset each epoch and visits the
# minibatches in that order; proximo cuts windows at multiples of 64 and shuffles them. This task runs
# sb3-contrib with proximo's cut (offset 0, the same minibatches visited in a random order) and compares it with
# sb3-contrib's own cut on pendulum-zoo-agent.
TASKS["pendulum-zoo-agent-sb3-aligned"] = dict(TASKS["pendulum-zoo-agent"], sb3_windows="aligned", zoo_row=False,
                                               baseline="pendulum-zoo-agent", variant_library="sb3-contrib")


def proximo_trial(task: str, seed: int, steps: int, eval_episodes: int) -> dict:
    """Train proximo's LSTM PPO with the task's settings and score it; returns the row's measured fields."""
    from proximo import PPO

    h = TASKS[task]
    network = h.get("network", NETWORK)
    schedule = "linear" if h["anneal"] else "constant"
    # A recurrent minibatch holds whole sequences: with a 64-sample minibatch (Pendulum) the sequences are
    # 64 steps long, as sb3-contrib's contiguous 64-step minibatches are (there cut at episode starts).
    bptt = 0 if h["batch_size"] >= h["num_envs"] * h["n_steps"] else h["batch_size"]
    agent = PPO(h["env"], num_envs=h["num_envs"], n_steps=h["n_steps"], batch_size=h["batch_size"],
                gamma=h["gamma"], gae_lambda=h["gae_lambda"], n_epochs=h["n_epochs"], ent_coef=h["ent_coef"],
                learning_rate=h["learning_rate"], lr_schedule=schedule, clip_range=h["clip_range"],
                clip_schedule=schedule, recurrent="lstm", rnn_hidden=network["rnn_hidden"], bptt_len=bptt,
                net_arch=network["net_arch"], activation=network["activation"], ortho_init=network["ortho_init"],
                normalize_obs=h.get("normalize_obs", False), seed=seed, total_steps=steps, eval_episodes=1,
                diagnostics=False, torch_threads=1, **h.get("proximo", {}))
    start, cpu = time.perf_counter(), time.process_time()
    agent.learn(steps)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu

    def act(obs, state, first):
        return agent.predict(obs, state=state, episode_start=np.array([first]))
    return score(task, act, eval_episodes, seed) | speed(steps, wall, cpu)


def speed(steps: int, wall: float, cpu: float) -> dict:
    """steps/s over learn()'s wall time, and per CPU second of this process (what sharing the machine, or
    being paused under QUIET, does not change)."""
    return {"sps": steps / wall, "wall_s": wall, "cpu_sps": steps / cpu, "cpu_s": cpu}


def sb3_trial(task: str, seed: int, steps: int, eval_episodes: int) -> dict:
    """Train sb3-contrib's RecurrentPPO with rl-zoo's settings for the task and score it."""
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    import proximo.envs.tasks  # noqa: F401  (registers the proximo/... ids)

    torch.set_num_threads(1)
    h = TASKS[task]
    network = h.get("network", NETWORK)
    envs = make_vec_env(h["env"], n_envs=h["num_envs"], seed=seed)
    if h.get("normalize_obs"):  # as rl-zoo's `normalize` with norm_reward False
        envs = VecNormalize(envs, norm_obs=True, norm_reward=False, gamma=h["gamma"])

    def linear(start):
        return lambda progress: progress * start
    extra = dict(use_sde=True, sde_sample_freq=4) if h["sde"] else {}
    if h.get("sb3_windows") == "aligned":
        align_sb3_minibatches()
    model = RecurrentPPO(
        "MlpLstmPolicy", envs, n_steps=h["n_steps"], batch_size=h["batch_size"], gamma=h["gamma"],
        gae_lambda=h["gae_lambda"], n_epochs=h["n_epochs"], ent_coef=h["ent_coef"],
        learning_rate=linear(h["learning_rate"]) if h["anneal"] else h["learning_rate"],
        clip_range=linear(h["clip_range"]) if h["anneal"] else h["clip_range"], seed=seed, verbose=0,
        device="cpu", policy_kwargs=dict(
            lstm_hidden_size=network["rnn_hidden"], net_arch=dict(pi=network["net_arch"], vf=network["net_arch"]),
            activation_fn={"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[network["activation"]],
            ortho_init=network["ortho_init"], enable_critic_lstm=True), **extra)
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu

    def act(obs, state, first):
        if h.get("normalize_obs"):  # the training statistics, frozen (normalize_obs reads them, updates nothing)
            obs = envs.normalize_obs(obs)
        action, state = model.predict(obs[None], state=state, episode_start=np.array([first]), deterministic=True)
        return action[0], state
    return score(task, act, eval_episodes, seed) | speed(steps, wall, cpu)


def align_sb3_minibatches() -> None:
    """Make sb3-contrib's recurrent buffer (in this trial's process) cut its rollout as proximo does: minibatches
    at multiples of batch_size in the env-major order (its random split pinned at 0), visited in a random order
    drawn from NumPy's global RNG, which sb3-contrib seeds."""
    from sb3_contrib.common.recurrent import buffers

    cut = buffers.RecurrentRolloutBuffer.get

    def aligned(self, batch_size=None):
        draw = np.random.randint
        np.random.randint = lambda *args, **kwargs: 0  # the split index: the only randint get() draws
        try:
            minibatches = list(cut(self, batch_size))
        finally:
            np.random.randint = draw
        for index in np.random.permutation(len(minibatches)):
            yield minibatches[index]
    buffers.RecurrentRolloutBuffer.get = aligned


def score(task: str, act, episodes: int, seed: int) -> dict:
    """Mean and std of the deterministic return over `episodes` episodes (env seeds 10_000 + 1000 seed + i)."""
    import gymnasium as gym

    import proximo.envs.tasks  # noqa: F401

    env = gym.make(TASKS[task]["env"])
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + seed * 1000 + i)
        state, first, total, done = None, True, 0.0, False
        while not done:
            action, state = act(obs, state, first)
            first = False
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return {"eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
            "eval_episodes": episodes}


def load(path: Path) -> dict:
    """The results file, or a fresh one."""
    if path.exists():
        return json.loads(path.read_text())
    from benchmarks.common import machine
    return {"machine": machine(), "settings": TASKS, "network": NETWORK, "source": ZOO_SOURCE, "rows": []}


def save(path: Path, data: dict) -> None:
    """Write the JSON (atomically: a stopped run never leaves half a file) and its markdown table."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    path.with_suffix(".md").write_text(markdown(data))


def markdown(data: dict) -> str:
    """Per task, one row per library: mean +- std over seeds of the evaluation return, and steps/s."""
    lines = ["# Recurrent PPO at rl-zoo's settings: proximo vs sb3-contrib", "",
             "`python benchmarks/recurrent_zoo.py` (see its docstring for the settings). Every trial in its own "
             "process with one torch thread, on a 2-core machine shared with other jobs (round 2's and the 100k "
             "runs: two trials at a time under `nice -n 19`; issue 29's gap search from 02:10 UTC on 2026-12-07: "
             "one at a time under `nice -n 10`, load average 4 to 8; the zoo-agent tasks from 15:59 UTC on 2026-12-07: two "
             "at a time under `nice -n 5`, no other measurement running; the gSDE PendulumNoVel rows from 18:07 UTC on "
             "2026-12-07 (proximo seeds 11-20 from 21:00 UTC) and the sb3-aligned rows from 22:00 UTC: beside two MinAtar training "
             "processes, up to five processes on the two cores; sb3-contrib's seeds 11-20 of pendulum-zoo-agent from 01:32 UTC "
             "on 2026-12-08: two at a time under `nice -n 5`, no other measurement running): steps/s are indicative, "
             "compare them within "
             "a table. Return: the deterministic "
             "evaluation return, mean over each seed's evaluation episodes, then mean +- std over seeds.", "",
             f"rl-zoo figures: {data['source']}.", ""]
    for task, h in TASKS.items():
        rows = [r for r in data["rows"] if r["task"] == task and current(r)]
        if not rows:
            continue
        sde = " (both with rl-zoo's gSDE, a new matrix every 4 steps)" if h["sde"] else ""
        lines += [f"## {h['zoo']} (`{task}`), {rows[0]['steps']:,} steps{sde}", "",
                  "| library | seeds | eval return (mean +- std over seeds) | per seed | steps/s (mean) | "
                  "steps per CPU-s (mean) |", "|---|---|---|---|---|---|"]
        for library in ("proximo", "sb3-contrib"):
            mine = sorted((r for r in rows if r["library"] == library), key=lambda r: r["seed"])
            if not mine:
                continue
            returns = [r["eval_return_mean"] for r in mine]
            lines.append(f"| {library} | {len(mine)} | {np.mean(returns):.2f} +- {np.std(returns):.2f} | "
                         f"{', '.join(f'{x:.1f}' for x in returns)} | {np.mean([r['sps'] for r in mine]):,.0f} | "
                         f"{cpu_speed(mine)} |")
        if h.get("zoo_row"):
            lines.append(f"| rl-zoo (benchmark.md) | 1 | {h['zoo_score']} (over episodes) | | | |")
        gap = welch(rows)
        if gap:
            lines += ["", gap]
        if h.get("proximo") and any(r["library"] == "proximo" for r in rows):
            lines += ["", f"proximo here runs with {h['proximo']}."]
        if h.get("baseline"):
            lines += ["", variant_gap(data["rows"], task, h["baseline"], h.get("variant_library", "proximo"))]
        if h.get("normalize_obs"):
            lines += ["", "Settings of the agent benchmark.md scores (its hub model card): the yml's, observations "
                      f"normalized by running statistics (rewards not), network {h['network']}."]
        lines.append("")
    return "\n".join(lines) + "\n"


def welch(rows: list[dict]) -> str:
    """The gap proximo - sb3-contrib of the mean returns over seeds, with Welch's t-test and the Mann-Whitney U
    test (no normality assumed): how likely a gap this large is between two libraries that learn equally
    well, given the seed-to-seed spread."""
    ours = [r["eval_return_mean"] for r in rows if r["library"] == "proximo"]
    theirs = [r["eval_return_mean"] for r in rows if r["library"] == "sb3-contrib"]
    if min(len(ours), len(theirs)) < 2:
        return ""
    return f"proximo - sb3-contrib: {two_tests(ours, theirs)}."


def current(row: dict) -> bool:
    """Whether a row ran with its task's present proximo overrides (rows without the field ran with none): a
    row from before an override changed is kept in the JSON but neither counted as done nor tabled."""
    return row["library"] != "proximo" or row.get("proximo", {}) == TASKS[row["task"]].get("proximo", {})


def variant_gap(rows: list[dict], task: str, baseline: str, library: str = "proximo") -> str:
    """library on `task` minus library on `baseline` (same seeds where both ran): Welch's t and Mann-Whitney U."""
    def returns(name: str) -> list[float]:
        return [r["eval_return_mean"] for r in rows if r["library"] == library and r["task"] == name and current(r)]
    ours, base = returns(task), returns(baseline)
    if min(len(ours), len(base)) < 2:
        return f"(fewer than 2 seeds of {library} on `{task}` or `{baseline}`: no test yet)"
    return f"{library} `{task}` - {library} `{baseline}`: {two_tests(ours, base)}."


def two_tests(ours: list[float], theirs: list[float]) -> str:
    """The gap of the means, with Welch's t-test and the Mann-Whitney U test (both two-sided), as one phrase."""
    from scipy import stats

    test = stats.ttest_ind(ours, theirs, equal_var=False)
    rank = stats.mannwhitneyu(ours, theirs, alternative="two-sided")
    return (f"{np.mean(ours) - np.mean(theirs):+.1f} (Welch's t = {test.statistic:.2f}, two-sided p = {test.pvalue:.2f}; "
            f"Mann-Whitney two-sided p = {rank.pvalue:.2f}; {len(ours)} and {len(theirs)} seeds)")


def cpu_speed(rows: list[dict]) -> str:
    """Mean steps per CPU-second over the rows that measured it (rows imported from round 2 did not)."""
    measured = [r["cpu_sps"] for r in rows if "cpu_sps" in r]
    return f"{np.mean(measured):,.0f}" + (f" ({len(measured)} seeds)" if len(measured) < len(rows) else "") \
        if measured else "-"


def main() -> None:
    """Run the missing trials (libraries alternating seed by seed), --jobs at a time, saving after each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", default="cartpole,pendulum")
    parser.add_argument("--libs", default="proximo,sb3-contrib")
    parser.add_argument("--steps", type=int, help="override the tasks' 100k (for a quick check)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pause-while", type=Path, help="a file: while it exists, start nothing and pause the "
                        "running trials (SIGSTOP/SIGCONT); steps per CPU-s are unaffected by the pause")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recurrent_zoo")
    parser.add_argument("--one", nargs=3, metavar=("LIBRARY", "TASK", "SEED"), help="run one trial, print its JSON")
    args = parser.parse_args()
    if args.one:
        library, task, seed = args.one
        steps = args.steps or TASKS[task]["steps"]
        trial = proximo_trial if library == "proximo" else sb3_trial
        print(json.dumps(trial(task, int(seed), steps, args.eval_episodes)))
        return
    path = args.out.with_suffix(".json")
    data = load(path)
    data["settings"] = {**data.get("settings", {}), **TASKS}  # tasks added since the file began
    done = {(r["library"], r["task"], r["seed"], r["steps"]) for r in data["rows"] if current(r)}
    plan = [(library, task, seed) for task in args.tasks.split(",") for seed in range(1, args.seeds + 1)
            for library in args.libs.split(",")]
    plan = [p for p in plan if (p[0], p[1], p[2], args.steps or TASKS[p[1]]["steps"]) not in done]
    running: list[tuple[tuple, subprocess.Popen]] = []
    paused = False
    while plan or running:
        if args.pause_while is not None and args.pause_while.exists() != paused:
            paused = not paused
            for _, process in running:
                process.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
        while plan and len(running) < args.jobs and not paused:
            library, task, seed = trial = plan.pop(0)
            command = [sys.executable, __file__, "--one", library, task, str(seed),
                       "--eval-episodes", str(args.eval_episodes)] + (["--steps", str(args.steps)] if args.steps else [])
            running.append((trial, subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True)))
        time.sleep(2)
        for item in list(running):
            (library, task, seed), process = item
            if process.poll() is None:
                continue
            running.remove(item)
            out, err = process.communicate()
            if process.returncode != 0:
                print(f"{library} {task} seed {seed} failed:\n{err[-3000:]}", file=sys.stderr, flush=True)
                continue
            row = {"library": library, "task": task, "seed": seed, "steps": args.steps or TASKS[task]["steps"],
                   **({"proximo": TASKS[task].get("proximo", {})} if library == "proximo" else {}),
                   **json.loads(out.strip().splitlines()[-1])}
            data["rows"].append(row)
            save(path, data)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
