"""LLM GRPO data parallel over torchrun ranks (gloo on 127.0.0.1): an update split over 2 ranks equals the
1-process update, `proximo llm grpo --nproc 2` trains with rank 0 alone writing, bad input is one line.

The process helpers are tests/test_distributed.py's: every child carries a token in its environment and
Launch.close() kills (by pid) whatever still carries it; every wait has a timeout.
"""
import json
import os
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_distributed import ROOT, Launch, _one_line_error, _tagged, _torchrun

PROMPTS = 4       # per step, over all ranks
GROUP = 4
FIXED_SEED = 1234
# One loss aggregation (and advantage setting) per case; each is one learn() of 2 epochs (2 optimizer
# steps) on one fixed batch, in micro-batches of 3 rows, so gradients accumulate across ranks and parts.
CASES = {
    "grpo": dict(loss_aggregation="grpo", kl_coef=0.1),
    "bnpo": dict(loss_aggregation="bnpo", ent_coef=0.01),
    "dr_grpo": dict(loss_aggregation="dr_grpo"),
    "dapo": dict(loss_aggregation="dapo"),
    "batch": dict(loss_aggregation="grpo", scale_rewards="batch"),
    "reinforce++": dict(advantage_estimator="reinforce++", kl_coef=0.05, loss_aggregation="bnpo"),
    # from a model directory (a built-in model reseeds torch): each rank draws its own adapter init, and
    # rank 0's is broadcast
    "lora": dict(loss_aggregation="bnpo", lora_r=4),
}
# adam_eps 1e-5, not 1e-8: Adam's first steps move each weight by ~lr x g / (|g| + eps), so where a gradient
# entry is ~0 (a few hundred of 600k here) the float noise of summing in another order (ranks, micro-batches)
# came out as up to 1e-5 of weight; a larger eps bounds that amplification and leaves every real step ~lr.
COMMON = dict(prompts_per_step=PROMPTS, group_size=GROUP, num_minibatches=1, n_epochs=2, micro_batch_size=3,
              learning_rate=1e-3, adam_eps=1e-5, num_eval_prompts=2, torch_threads=1, seed=3, steps=1)
ROW_KEYS = ("reward", "reward_std", "policy_loss", "clip_fraction", "approx_kl", "entropy", "kl_ref",
            "response_length", "groups_drawn")
# PPO-RLHF on the same terms: a value head of its own (broadcast), running score normalization, whitened
# advantages and the adaptive KL controller, each over every rank's rollouts.
RLHF_PROMPTS = 8  # one completion each
RLHF_CASE = dict(prompts_per_step=RLHF_PROMPTS, num_minibatches=1, n_epochs=2, micro_batch_size=3,
                 learning_rate=1e-3, adam_eps=1e-5, num_eval_prompts=2, torch_threads=1, seed=3, steps=1,
                 task="add", critic="head", normalize_scores=True, kl_controller="adaptive", kl_coef=0.1)
RLHF_ROW_KEYS = ("score", "reward_std", "policy_loss", "value_loss", "clip_fraction", "approx_kl", "entropy",
                 "kl_ref", "kl_ref_sequence", "response_length", "accuracy", "kl_coef_next", "score_mean")


def _varied_reward(prompts, completions):
    """A reward that differs within groups even for an untrained model (the task's would be all 0)."""
    return [float(len(c) % 4) + c.count("1") for c in completions]


def _fixed_share(trainer) -> None:
    """Make every collect() draw one fixed batch of PROMPTS groups (the same on every rank: one seed) and
    keep this rank's contiguous share of its groups, so 2 ranks hold the halves of 1 process's batch."""
    draw, world = trainer._draw_groups, trainer.world

    def draw_share(n: int, first: bool = False) -> SimpleNamespace:
        torch.manual_seed(FIXED_SEED)
        trainer.rng = random.Random(FIXED_SEED)
        full = draw(n * world.size, first=first)
        rows = torch.arange(world.rank * n * GROUP, (world.rank + 1) * n * GROUP)
        return SimpleNamespace(rollout=full.rollout.select(rows), rewards=full.rewards[rows], per_fn=full.per_fn,
                               gen_s=full.gen_s, n=n, episodes=None)
    trainer._draw_groups = draw_share


def _fixed_rollout(trainer) -> None:
    """RLHF's collect() on one fixed batch of RLHF_PROMPTS completions, this rank's contiguous share of them."""
    rollout, world = trainer.rollout, trainer.world
    fixed = trainer.task.sample_prompts(random.Random(FIXED_SEED), RLHF_PROMPTS)
    share = RLHF_PROMPTS // world.size
    trainer.sample_prompts = lambda n: fixed[world.rank * share:(world.rank + 1) * share]

    def rollout_share(prompts: list[str], repeats: int = 1):
        torch.manual_seed(FIXED_SEED)
        full, completions, seconds = rollout(fixed, repeats)
        rows = range(world.rank * share, (world.rank + 1) * share)
        return full.select(torch.tensor(list(rows))), [completions[i] for i in rows], seconds
    trainer.rollout = rollout_share


def _rlhf_trainer(out: Path):
    """PPO-RLHF on the built-in model against a reward model that is the same on every rank (one seed)."""
    from proximo.llm.models import ScalarHead, hidden_size, load_model
    from proximo.llm.reward_model import RewardModel
    from proximo.llm.rlhf import RLHF

    backbone, tokenizer, _ = load_model("tiny", seed=7)
    torch.manual_seed(7)
    head = ScalarHead(hidden_size(backbone))
    for p in head.parameters():  # a head starts at 0 (every score 0): give it something to say
        torch.nn.init.normal_(p, std=1.0)
    reward_model = RewardModel(backbone, tokenizer, head)
    trainer = RLHF("tiny", reward_model=reward_model, tensorboard=False,
                   run_dir=out / f"run-rlhf-rank{os.environ.get('RANK', 0)}", **RLHF_CASE)
    _fixed_rollout(trainer)
    return trainer


def _one_update(out: Path, model_dir: Path) -> None:
    """For each case: a GRPO trainer, one learn() on its share of the fixed batch; rank 0 writes the
    row and every rank its parameters and gradients (and the first draws of its torch stream)."""
    from proximo.llm.grpo import GRPO
    from proximo.llm.tasks import get_task

    prompts = get_task("add").sample_prompts(random.Random(0), 8)
    for name, case in [*CASES.items(), ("rlhf", None)]:
        if case is None:
            trainer = _rlhf_trainer(out)
        else:
            trainer = GRPO(model_dir if name == "lora" else "tiny", reward_fn=_varied_reward, prompts=prompts,
                           tensorboard=False,
                           run_dir=out / f"run-{name}-rank{os.environ.get('RANK', 0)}", **COMMON, **case)
            _fixed_share(trainer)
        # The gradient each optimizer step applies (after the all-reduce): Adam's step is nearly blind to a
        # gradient's scale (~lr x sign), so the parameters alone would not catch a wrong count.
        grads, step = [], trainer.precision.step
        trainer.precision.step = lambda optimizer, norm: (grads.append(optimizer.grad.clone()), step(optimizer, norm))[1]
        stream = torch.rand(4)  # what this rank would sample from
        before = torch.cat([p.detach().reshape(-1) for p in trainer.trainable_parameters()]).clone()
        row = trainer.learn(trainer.collect(), trainer.make_optimizer())
        after = torch.cat([p.detach().reshape(-1) for p in trainer.trainable_parameters()])
        rank = trainer.world.rank
        save_file({"before": before, "after": after.contiguous(), "grad1": grads[0], "grad2": grads[1],
                   "stream": stream},
                  str(out / f"{name}.rank{rank}.safetensors"))
        if case is None:  # the state RLHF carries to the next step, the same on every rank
            row.update(kl_coef_next=trainer.kl_controller.value, score_mean=float(trainer.score_stats.mean))
        if trainer.world.is_main:
            keys = ROW_KEYS if case is not None else RLHF_ROW_KEYS
            (out / f"{name}.json").write_text(json.dumps({k: row[k] for k in keys}))
    trainer.world.close()


def test_two_ranks_holding_halves_of_a_batch_update_as_one_process_on_all_of_it(tmp_path):
    ranks, alone = tmp_path / "ranks", tmp_path / "alone"
    ranks.mkdir()
    alone.mkdir()
    from proximo.llm.models import load_model, save_model
    model, tokenizer, _ = load_model("tiny", seed=5)
    save_model(model, tokenizer, tmp_path / "model")
    launch = Launch(_torchrun(2, "tests.test_llm_distributed", str(ranks), str(tmp_path / "model")), ROOT, "exact",
                    logs=tmp_path)
    try:
        _one_update(alone, tmp_path / "model")  # meanwhile, here: one process on the whole batch
        assert launch.wait(120) == 0, launch.stderr()[-3000:]
    finally:
        launch.close()
    for name in [*CASES, "rlhf"]:
        one, r0, r1 = (load_file(str(d / f"{name}.rank{r}.safetensors")) for d, r in
                       ((alone, 0), (ranks, 0), (ranks, 1)))
        assert torch.equal(one["before"], r0["before"]) and torch.equal(r0["before"], r1["before"]), name
        # rank 0 samples as 1 process does, rank 1 from its own stream
        assert torch.equal(one["stream"], r0["stream"]) and not torch.equal(r0["stream"], r1["stream"]), name
        moved = (one["after"] - one["before"]).abs().max().item()
        assert moved > 1e-3, f"{name}: the update moved no parameter ({moved})"  # Adam's step is ~lr = 1e-3
        assert torch.equal(r0["after"], r1["after"]), f"{name}: the ranks' parameters differ"
        for key in ("grad1", "grad2"):  # the summed gradient of each optimizer step is the whole batch's
            scale = one[key].abs().max().item()
            assert scale > 1e-4 and (r0[key] - one[key]).abs().max().item() < 1e-5 * scale, (name, key)
        gap = (r0["after"] - one["after"]).abs().max().item()
        print(f"{name}: moved {moved:.2e}, 2 ranks - 1 process {gap:.2e}")
        assert gap < 1e-6, f"{name}: 2 ranks differ from 1 process by {gap}"
        row_one, row_ranks = (json.loads((d / f"{name}.json").read_text()) for d in (alone, ranks))
        for key in row_one:
            if row_one[key] is None:  # not measured this step (kl_ref without a reference copy)
                assert row_ranks[key] is None, (name, key)
                continue
            assert row_ranks[key] == pytest.approx(row_one[key], rel=1e-5, abs=1e-7), (name, key)
        # rank 0 wrote the run directory under its name; rank 1 wrote none under its own
        assert (ranks / f"run-{name}-rank0" / "config.json").is_file()
        assert not (ranks / f"run-{name}-rank1").exists()


def _run_nproc_2(tmp_path, command: str, *flags: str) -> tuple[Path, list[str], "Launch"]:
    """`proximo llm COMMAND ... --nproc 2` into tmp_path/run, bounded and cleaned up; checks what every
    data-parallel run must show (exit 0, no rank outlives it, rank 0 alone writes one row per step and
    prints); returns (run_dir, metrics lines, launch)."""
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "proximo", "llm", command, *flags, "--task", "add", "--steps", "2",
            "--num-eval-prompts", "4", "--torch-threads", "1", "--run-dir", str(run_dir), "--no-tensorboard",
            "--quiet", "--nproc", "2"]
    before = {p.name for p in tmp_path.iterdir()}
    logs = tmp_path / "logs"
    logs.mkdir()
    launch = Launch(argv, tmp_path, command, logs=logs)
    try:
        code = launch.wait(150)
        assert not _tagged(launch.token), "a rank outlived torchrun"
    finally:
        launch.close()
    assert code == 0, launch.stderr()[-3000:]
    assert {p.name for p in tmp_path.iterdir()} - before == {"logs", "run"}  # no default run dir of a rank
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2 and (run_dir / "model").is_dir()
    assert json.loads((run_dir / "config.json").read_text())["world"] == {"size": 2, "backend": "gloo"}
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in rows[1:]] == [0, 1, 2]  # one row per step: rank 0's alone
    assert launch.out.read_text().count("run: ") == 1  # rank 0 alone prints
    return run_dir, rows, launch


def test_llm_grpo_nproc_2_trains_with_rank_0_alone_writing(tmp_path):
    _, rows, _ = _run_nproc_2(tmp_path, "grpo", "--init", "tiny", "--prompts-per-step", "4", "--group-size", "2")
    header = rows[0].split(",")
    drawn = [line.split(",")[header.index("groups_drawn")] for line in rows[2:]]
    assert drawn == ["4", "4"]  # the step's 4 prompts over both ranks, 2 each


def test_llm_rlhf_nproc_2_trains_with_rank_0_alone_writing(tmp_path):
    from proximo.llm import train_reward_model
    rm = train_reward_model("tiny", run_dir=tmp_path / "rm", max_steps=2, batch_size=8, train_pairs=32,
                            eval_pairs=8, num_eval_prompts=2, tensorboard=False)
    _run_nproc_2(tmp_path, "rlhf", "--init", "tiny", "--reward-model", rm["run_dir"], "--prompts-per-step", "8",
                 "--num-minibatches", "2")


@pytest.mark.parametrize("command", ["sft", "rm"])
def test_single_process_llm_commands_refuse_torchrun_in_one_line(command, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    flag = "--model" if command == "sft" else "--init"
    line = _one_line_error(capsys, ["llm", command, flag, "tiny"])
    assert f"`proximo llm {command}` runs in one process" in line and "--nproc" in line


def test_prompts_that_do_not_split_over_the_processes_are_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    base = ["llm", "grpo", "--init", "tiny", "--task", "add", "--nproc", "2"]
    line = _one_line_error(capsys, [*base, "--prompts-per-step", "3", "--group-size", "2", "--num-minibatches", "1"])
    assert "2 processes do not divide prompts_per_step 3" in line and "--nproc 1, 3" in line
    # 2 x 3 completions split into 2 minibatches, but one rank's 3 do not
    line = _one_line_error(capsys, [*base, "--prompts-per-step", "2", "--group-size", "3", "--num-minibatches", "2"])
    assert "num_minibatches 2 does not divide one process's 3 completions per step" in line
    assert "--nproc must be at least 1, got 0" in _one_line_error(capsys, [*base[:-1], "0"])


def test_under_plain_torchrun_a_bad_split_is_said_once(tmp_path):
    argv = _torchrun(2, "proximo", "llm", "grpo", "--init", "tiny", "--task", "add", "--prompts-per-step", "3",
                     "--group-size", "2", "--num-minibatches", "1", "--run-dir", str(tmp_path / "run"), "--quiet")
    launch = Launch(argv, tmp_path, "bad")
    try:
        code = launch.wait(120)
    finally:
        launch.close()
    errors = [line for line in launch.stderr().splitlines() if line.startswith("proximo: error:")]
    assert code != 0 and len(errors) == 1, launch.stderr()[-3000:]
    assert "2 processes do not divide prompts_per_step 3" in errors[0]
    assert not (tmp_path / "run").exists()


if __name__ == "__main__":  # the worker of the exactness test, started by torchrun
    _one_update(Path(sys.argv[1]), Path(sys.argv[2]))
