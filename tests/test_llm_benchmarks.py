"""The GRPO speed benchmark counts what the trainer trains on: its counting sampler sees every rollout the
trainer uses (a wrapper off the trainer's path once made the benchmark print 0 tokens/s), and a count of
nothing stops the benchmark instead of printing a figure."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "llm.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("proximo_bench_llm", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_counting_sampler_counts_the_trained_rollouts_and_zero_stops(bench, tmp_path):
    from proximo.llm import GRPO
    sampler = bench.counting_sampler()
    trainer = GRPO("tiny", reward_fn=lambda p, c: [float(len(x)) for x in c], prompts=["1+2=", "3+4="],
                   sampler=sampler, group_size=2, prompts_per_step=2, num_minibatches=1, max_new_tokens=4,
                   num_eval_prompts=1, eval_every=0, tensorboard=False, run_dir=tmp_path / "run")
    trainer.step_count += 1
    row = trainer.step(trainer.make_optimizer())
    assert sampler.completions == 4 and sampler.tokens == round(row["response_length"] * 4) > 0
    with pytest.raises(SystemExit, match="benchmark counted no completion tokens"):
        bench.require_counted("completion tokens", 0)
