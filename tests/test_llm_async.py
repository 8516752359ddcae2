"""GRPO's asynchronous generation (proximo/llm/async_sampler.py): a generator process one update behind the
learner. Each run here is a few tiny-model steps; the generator's start (a spawned interpreter importing torch
and transformers) is most of each test's time."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from proximo.errors import ConfigError, GenerationProcessError
from proximo.llm import GRPO, GRPOConfig
from proximo.llm.async_sampler import AsyncProcessSampler
from proximo.llm.generation import KVCacheSampler

ROOT = Path(__file__).resolve().parents[1]
CLOCK = {"time_s", "tokens_per_s", "gen_tokens_per_s"}
PROMPTS = ["ab", "ba", "aa", "bb"]
FAST = dict(num_eval_prompts=2, tensorboard=False, prompts_per_step=4, group_size=2, max_new_tokens=6, eval_every=0,
            device="cpu", learning_rate=1e-3, torch_threads=1)


def _length(prompts, completions):
    return [float(len(c)) for c in completions]


def _gone(pid: int, within: float = 10.0) -> bool:
    """True once no process has this id (a reaped child), waiting up to `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/status")
        if status.is_file() and "State:\tZ" in status.read_text():
            return True  # exited; its parent has not reaped it yet
        time.sleep(0.05)
    return False


def _spied(trainer) -> list[tuple[int, list[int], int]]:
    """Record (learner version, rows' policy versions, generator pid) of every rollout the sampler returns."""
    seen = []
    inner = trainer.sampler.generate

    def generate(*args, **kwargs):
        rollout = inner(*args, **kwargs)
        seen.append((trainer.learner_version, rollout.policy_version.tolist(), trainer.sampler.pid))
        return rollout
    trainer.sampler.generate = generate
    return seen


def _async_run(run_dir: Path, steps: int = 4, **extra):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=run_dir, steps=steps, async_generation=True,
                   offpolicy_correction="token_truncate", **FAST, **extra)
    assert isinstance(trainer.sampler, AsyncProcessSampler) and trainer.sampler.process is None  # lazy
    seen = _spied(trainer)
    trainer.train()
    return trainer, seen


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("async") / "run"
    trainer, seen = _async_run(run_dir)
    return run_dir, trainer, seen


def test_each_step_is_sampled_exactly_one_update_behind(one_run):
    run_dir, trainer, seen = one_run
    assert trainer.config.max_staleness == 1  # async's default bound
    assert len(seen) == 4
    # step 1 has no earlier request: sampled from the live version 0; step t >= 2 from version t-2 with the
    # learner at t-1
    for step, (learner, versions, _) in enumerate(seen, start=1):
        assert learner == step - 1
        assert versions == [max(step - 2, 0)] * 8
    assert [row["offpolicy/version_lag"] for row in trainer.history] == [0.0, 1.0, 1.0, 1.0]
    assert all(row["offpolicy/stale_frac"] == 0.0 for row in trainer.history)  # lag 1 <= max_staleness 1
    assert len({pid for _, _, pid in seen}) == 1  # one generator for the whole run
    assert trainer.sampler.process is None and _gone(seen[0][2])


def test_async_with_the_correction_gives_finite_losses_and_logs_the_gap(one_run):
    run_dir, trainer, _ = one_run
    rows = [json.loads(line) for line in (run_dir / "updates.jsonl").read_text().splitlines()][1:]  # 0: eval
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert math.isfinite(row["policy_loss"]) and math.isfinite(row["offpolicy/kl"])
        for key in ("offpolicy/kl", "offpolicy/abs_log_w", "offpolicy/clipped_frac", "offpolicy/stale_frac",
                    "offpolicy/version_lag"):
            assert key in row
    # step 1's sampler had the learner's weights (another process, same float32 math); from step 2 on it
    # had the weights of one update before, which changed the policy
    assert rows[0]["offpolicy/kl"] < 1e-9 and rows[0]["offpolicy/abs_log_w"] < 1e-5
    assert all(r["offpolicy/kl"] > 1e-9 and r["offpolicy/abs_log_w"] > 1e-5 for r in rows[1:])
    assert "offpolicy/version_lag" in (run_dir / "metrics.csv").read_text().splitlines()[0]


def test_async_runs_with_one_seed_are_identical(one_run, tmp_path):
    run_dir, first, seen_first = one_run
    again, seen_again = _async_run(tmp_path / "again")
    assert [v for _, v, _ in seen_first] == [v for _, v, _ in seen_again]
    strip = [{k: v for k, v in row.items() if k not in CLOCK} for row in first.history]
    assert strip == [{k: v for k, v in row.items() if k not in CLOCK} for row in again.history]
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("lora_r", [0, 2])
def test_the_generator_holds_its_own_copy_and_equals_the_learner_after_a_publish(tmp_path, lora_r):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, steps=1, async_generation=True,
                   lora_r=lora_r, **FAST)
    sampler = trainer.sampler
    try:
        args, _ = trainer._sampler_args(PROMPTS[:2])
        sampler.generate(*args, repeats=2)
        before = {name: t.detach().clone() for name, t in
                  [*trainer.model.named_parameters(), *trainer.model.named_buffers()]}
        with torch.no_grad():
            for p in trainer.model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.01)
        version, theirs = sampler.generator_state()  # nothing published: still version 0's weights
        assert version == 0 and set(theirs) == set(before)
        assert all(torch.equal(theirs[name], before[name]) for name in before)
        sampler.policy_version = 1
        sampler.sync_weights(trainer.model)
        version, theirs = sampler.generator_state()
        mine = {name: t.detach() for name, t in [*trainer.model.named_parameters(), *trainer.model.named_buffers()]}
        assert version == 1 and set(theirs) == set(mine)
        assert all(torch.equal(theirs[name], mine[name]) for name in mine)
        assert any(not torch.equal(theirs[name], before[name]) for name in mine)
        pid = sampler.pid
    finally:
        sampler.close()
    assert sampler.process is None and _gone(pid)


def test_max_staleness_zero_is_refused_and_async_defaults_to_one():
    with pytest.raises(ConfigError, match="max_staleness 0 would drop every row"):
        GRPOConfig(async_generation=True, max_staleness=0)
    assert GRPOConfig(async_generation=True).max_staleness == 1
    assert GRPOConfig(async_generation=True, max_staleness=3).max_staleness == 3
    assert GRPOConfig().max_staleness is None  # sync runs keep their default
    with pytest.raises(ConfigError, match="async_timeout_s must be a positive"):
        GRPOConfig(async_generation=True, async_timeout_s=0.0)


def test_async_with_what_it_cannot_serve_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cannot drive the outside sampler KVCacheSampler"):
        GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path / "a", async_generation=True,
             sampler=KVCacheSampler(), **FAST)
    from proximo.cli import main
    code = main(["llm", "grpo", "--init", "tiny", "--async-generation", "--nproc", "2", "--prompts-per-step", "4",
                 "--group-size", "2", "--run-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "async_generation runs one generator beside one learner" in err[0], err
    assert not (tmp_path / "b").exists()
    # The generator samples single turns: tools over several turns are refused before anything is made.
    code = main(["llm", "grpo", "--init", "tiny", "--async-generation", "--tools", "proximo:calculator",
                 "--prompts-per-step", "4", "--group-size", "2", "--run-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "async_generation samples single-turn completions" in err[0], err
    assert not (tmp_path / "c").exists()


def test_the_generator_is_gone_after_a_reward_function_fails(tmp_path):
    calls = []

    def failing(prompts, completions):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in the reward")
        return _length(prompts, completions)
    trainer = GRPO("tiny", reward_fn=failing, prompts=PROMPTS, run_dir=tmp_path, steps=6, async_generation=True,
                   **FAST)
    seen = _spied(trainer)
    with pytest.raises(Exception, match="boom in the reward"):
        trainer.train()
    assert trainer.sampler.process is None and seen and _gone(seen[0][2])


def test_a_dead_generator_is_one_clear_error_not_a_hang(tmp_path):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, steps=6, async_generation=True,
                   async_timeout_s=120.0, **FAST)

    def kill(row):
        if row["update"] == 1:
            os.kill(trainer.sampler.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(GenerationProcessError, match=r"the generation process died \(exit code -9\)"):
        trainer.train(callback=kill)
    assert time.monotonic() - started < 120 and trainer.sampler.process is None
    assert trainer.step_count <= 3  # noticed at the latest when step 3 waits for it


def test_a_generator_that_answers_nothing_times_out(tmp_path):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, steps=6, async_generation=True,
                   async_timeout_s=1.5, **FAST)

    def freeze(row):
        if row["update"] == 1:
            os.kill(trainer.sampler.pid, signal.SIGSTOP)  # alive, but it will never answer
    seen = _spied(trainer)
    with pytest.raises(GenerationProcessError, match=r"sent nothing for 1.5 s .*raise async_timeout_s"):
        trainer.train(callback=freeze)
    assert trainer.sampler.process is None and _gone(seen[0][2])  # close() killed the stopped process


def _descendants(pid: int) -> list[int]:
    """Ids of every process below pid (from /proc): the generator is a child of multiprocessing's forkserver."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def test_sigterm_to_the_process_group_stops_saves_and_leaves_no_process(tmp_path):
    """The scheduler's case: SIGTERM to every process of the job. The generator ignores it, so the learner
    finishes its step with it, saves, sends it away and exits 143, leaving no process behind."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "proximo", "llm", "grpo", "--init", "tiny", "--async-generation", "--steps", "40",
            "--prompts-per-step", "4", "--group-size", "2", "--max-new-tokens", "8", "--num-eval-prompts", "2",
            "--eval-every", "50", "--device", "cpu", "--torch-threads", "1", "--no-tensorboard", "--quiet",
            "--run-dir", str(run_dir)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        rows = run_dir / "updates.jsonl"
        while proc.poll() is None and time.monotonic() < deadline and \
                (not rows.is_file() or len(rows.read_text().splitlines()) < 3):
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be signalled"
        children = _descendants(proc.pid)
        assert len(children) >= 2  # the forkserver and the generator below it (and the resource tracker)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("proximo: stopped by SIGTERM at step "), err
    assert all(_gone(pid) for pid in children)
    step = int(last.split("at step ")[1].split(";")[0].replace(",", ""))
    assert (run_dir / "checkpoints" / f"step_{step:012d}" / "state.json").is_file()


def test_a_stopped_async_run_resumes_and_finishes(tmp_path):
    from proximo.stopping import TrainingInterrupted

    def make():
        return GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, steps=5, async_generation=True,
                    save_every=0, **FAST)
    stopped = make()

    def stop(row):
        if row["update"] == 2:
            stopped.request_stop(signal.SIGTERM)
    seen = _spied(stopped)
    with pytest.raises(TrainingInterrupted):
        stopped.train(callback=stop)
    assert stopped.sampler.process is None and _gone(seen[0][2])
    resumed = make()
    resumed.resume(tmp_path)
    seen = _spied(resumed)
    resumed.train()
    assert resumed.step_count == 5 and resumed.sampler.process is None
    # the resumed run's first step is sampled at once from the loaded weights (lag 0), the later ones one behind
    assert [learner - versions[0] for learner, versions, _ in seen] == [0, 1, 1]
    assert [row["offpolicy/version_lag"] for row in resumed.history[-3:]] == [0.0, 1.0, 1.0]
    assert all(math.isfinite(row["policy_loss"]) for row in resumed.history)


def test_an_error_inside_the_generator_reaches_the_learner_in_one_line(tmp_path):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, steps=1, async_generation=True,
                   **FAST)
    sampler = trainer.sampler
    args, _ = trainer._sampler_args(PROMPTS[:2])
    sampler.generate(*args, repeats=2)
    pid = sampler.pid
    # A request claiming weights the generator was never given: it must refuse it, not sample from others.
    ids, mask = args[1].numpy(), args[2].numpy()
    sampler._requests.put(("generate", 99, 7, ids, mask, 4, 2, 0, 1.0, 1, 0))
    with pytest.raises(GenerationProcessError, match=r"^the generation process failed: RuntimeError: request 99 "
                                                     r"was made at weights version 7 but version 0 is published$"):
        sampler.generate(*args, repeats=2)
    assert sampler.process is None and _gone(pid)


def test_old_logprobs_sampler_takes_the_ratio_against_the_generator_and_skips_the_recompute(tmp_path, monkeypatch):
    # With one epoch of one minibatch the recomputed old policy IS the policy being trained, so the update's
    # first (only) ratio is exactly 1 and approx_kl 0. Against the generator's log-probs (one update behind
    # from step 2 on) the ratio is pi_{t-1}/pi_{t-2}: approx_kl > 0, and the learner runs no forward pass of
    # its own before the update.
    import proximo.llm.rl as rl
    passes = []
    inner = rl.response_logprobs

    def counted(model, *args, **kwargs):
        passes.append(torch.is_inference_mode_enabled())
        return inner(model, *args, **kwargs)
    monkeypatch.setattr(rl, "response_logprobs", counted)
    runs = {}
    for mode in ("recompute", "sampler"):
        passes.clear()
        trainer, _ = _async_run(tmp_path / mode, steps=3, old_logprobs=mode, num_minibatches=1, n_epochs=1)
        runs[mode] = (trainer.history, sum(passes))
    recompute, sampler = runs["recompute"][0], runs["sampler"][0]
    assert runs["recompute"][1] == 3 and runs["sampler"][1] == 0  # one old-policy pass per step, or none
    assert all(abs(row["approx_kl"]) < 1e-7 for row in recompute)
    assert abs(sampler[0]["approx_kl"]) < 1e-6 < min(abs(row["approx_kl"]) for row in sampler[1:])
    # the gap to the learner is not measured without the learner's pass: NaN, not a false 0
    assert all(math.isfinite(row["offpolicy/kl"]) for row in recompute)
    assert all(math.isnan(row["offpolicy/kl"]) and math.isnan(row["offpolicy/clipped_frac"]) for row in sampler)
    assert [row["offpolicy/version_lag"] for row in sampler] == [0.0, 1.0, 1.0]


def test_generator_threads_sets_the_generator_apart_from_the_learner(tmp_path):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path / "a", async_generation=True,
                   **{**FAST, "torch_threads": 2}, generator_threads=1)
    assert trainer.sampler.threads == 1 and trainer.config.torch_threads == 2
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path / "b", async_generation=True,
                   **{**FAST, "torch_threads": 2})
    assert trainer.sampler.threads == 2  # unset: the learner's count
    with pytest.raises(ConfigError, match="generator_threads must be 0"):
        GRPOConfig(generator_threads=-1).validate()
