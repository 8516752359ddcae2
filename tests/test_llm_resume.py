"""LLM runs resume bitwise: a GRPO run with LoRA, a PPO-RLHF run and an SFT run that crash after their step-2
checkpoint and resume from it end exactly as the same runs uninterrupted (weights, optimizer moments, every
metrics row but the clock's, the held-out evaluation); bad --resume input is one line and exit 2."""
import csv
import json

import pytest
import torch

from proximo.cli import main
from proximo.llm import GRPO, RLHF, SFT
from proximo.llm.models import ScalarHead, hidden_size, load_model
from proximo.llm.reward_model import RewardModel

# Columns that measure the clock, not the training: they differ between any two runs.
CLOCK = {"time_s", "tokens_per_s", "gen_tokens_per_s", "sequences_per_s"}
TINY = dict(num_eval_prompts=2, tensorboard=False, save_every=2)


class Crash(Exception):
    """What a kill looks like to the test: the run stops after a step, with its checkpoints on disk."""


def _crash_after(step: int):
    def callback(row):
        if row["update"] == step:
            raise Crash
    return callback


def _flat(trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.ensure_optimizer().params])


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "updates.jsonl") as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in CLOCK} for line in handle]


def _interrupted_then_resumed(make, tmp_path):
    """(the uninterrupted trainer, the resumed one): the second crashes after step 3, a new trainer resumes
    it from its step-2 checkpoint and trains to the end."""
    whole = make(tmp_path / "whole")
    whole.train()
    broken = make(tmp_path / "broken")
    with pytest.raises(Crash):
        broken.train(callback=_crash_after(3))
    resumed = make(tmp_path / "broken")
    assert resumed.resume(tmp_path / "broken").name == "step_000000000002"
    resumed.train()
    return whole, resumed


def _assert_same_run(whole, resumed, tmp_path):
    assert torch.equal(_flat(whole), _flat(resumed))
    a, b = (t.ensure_optimizer().state_dict()["state"] for t in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
    assert _rows(tmp_path / "whole") == _rows(tmp_path / "broken")
    assert whole.rng.getstate() == resumed.rng.getstate()  # the trainer's own draws (prompts, rows) too


def _reward(prompts, completions):
    return [float(len(c) % 3) + c.count("1") for c in completions]


def test_grpo_with_lora_resumes_bitwise(tmp_path):
    def make(run_dir):
        return GRPO("tiny", reward_fn=_reward, prompts=["12+3=", "4+56=", "7+8=", "90+1="], run_dir=run_dir,
                    steps=4, prompts_per_step=2, group_size=2, num_minibatches=2, n_epochs=2, max_new_tokens=3,
                    eval_every=3, lora_r=4, kl_coef=0.05, device="cpu", **TINY)
    whole, resumed = _interrupted_then_resumed(make, tmp_path)
    _assert_same_run(whole, resumed, tmp_path)
    assert whole.summary["after"] == resumed.summary["after"] and resumed.summary["steps"] == 4
    assert resumed.summary["resumed_from"].endswith("step_000000000002")
    assert whole.summary["lora"] == resumed.summary["lora"]


def test_rlhf_resumes_bitwise(tmp_path):
    backbone, tokenizer, _ = load_model("tiny", seed=7)
    torch.manual_seed(7)
    scorer = RewardModel(backbone, tokenizer, ScalarHead(hidden_size(backbone), init_std=1.0))  # says something

    def make(run_dir):
        return RLHF("tiny", reward_model=scorer, run_dir=run_dir, steps=4, prompts_per_step=4, num_minibatches=2,
                    n_epochs=2, max_new_tokens=3, eval_every=0, critic="head", normalize_scores=True,
                    kl_controller="adaptive", kl_coef=0.1, device="cpu", **TINY)
    whole, resumed = _interrupted_then_resumed(make, tmp_path)
    _assert_same_run(whole, resumed, tmp_path)  # the value head is among the optimizer's parameters
    assert whole.kl_controller.value == resumed.kl_controller.value != 0.1  # the adaptive KL moved, and agrees
    assert torch.equal(whole.score_stats.mean, resumed.score_stats.mean)
    assert torch.equal(whole.score_stats.var, resumed.score_stats.var)


def test_sft_on_a_dataset_resumes_bitwise(tmp_path):
    rows = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(3) for b in range(3)]

    def make(run_dir):
        return SFT("tiny", run_dir=run_dir, dataset=rows, max_steps=4, batch_size=4, eval_every=3,
                   **TINY)
    whole, resumed = _interrupted_then_resumed(make, tmp_path)
    _assert_same_run(whole, resumed, tmp_path)
    assert whole._order == resumed._order  # the same place in the same pass over the rows


def _one_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_resume_input_is_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    quiet = ["--quiet", "--no-tensorboard"]
    assert main(["llm", "grpo", "--init", "tiny", "--steps", "2", "--save-every", "1", "--prompts-per-step", "2",
                 "--group-size", "2", "--num-eval-prompts", "2", "--max-new-tokens", "2", "--run-dir", str(run),
                 *quiet]) == 0
    capsys.readouterr()
    assert json.loads((run / "config.json").read_text())["step_unit"] == "updates"
    line = _one_line(capsys, ["llm", "sft", "--resume", str(run)])
    assert "is a `proximo llm grpo` run" in line and f"proximo llm grpo --resume {run}" in line
    line = _one_line(capsys, ["llm", "grpo", "--resume", str(run), "--init", "tiny-llama"])
    assert "from the model it was trained from (--init tiny)" in line
    line = _one_line(capsys, ["llm", "grpo", "--resume", str(run), "--learning-rate", "0.1"])
    assert "--learning-rate cannot change" in line
    # the same run again from a model folder whose weights then change under it
    model_run = tmp_path / "from-folder"
    assert main(["llm", "grpo", "--init", str(run), "--steps", "1", "--save-every", "1", "--prompts-per-step", "2",
                 "--group-size", "2", "--num-eval-prompts", "2", "--max-new-tokens", "2", "--run-dir", str(model_run),
                 *quiet]) == 0
    capsys.readouterr()
    from safetensors.torch import load_file, save_file
    weights = load_file(str(run / "model" / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(run / "model" / "model.safetensors"), metadata={"format": "pt"})
    line = _one_line(capsys, ["llm", "grpo", "--resume", str(model_run), "--steps", "2", *quiet])
    assert "has changed since checkpoint" in line
    assert _one_line(capsys, ["llm", "grpo", "--resume", str(tmp_path / "nothing")]).count("neither a proximo run") == 1


def test_an_llm_run_directory_reads_as_a_classic_one(tmp_path, capsys):
    """The doctor and the plot read an LLM run directory; its rows carry the one update's statistics."""
    run = tmp_path / "run"
    trainer = GRPO("tiny", reward_fn=_reward, prompts=["1+2=", "3+4="], run_dir=run, steps=3, prompts_per_step=2,
                   group_size=2, max_new_tokens=3, eval_every=0, device="cpu", **TINY)
    trainer.train()
    names = {type(c).__name__ for c in trainer._callbacks.callbacks}
    assert {"LogMetrics", "WatchHealth", "ShowProgress", "CheckpointEvery"} <= names
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["global_step"] for r in rows] == ["0", "1", "2", "3"]
    assert all(rows[i]["clip_fraction"] != "" and rows[i]["approx_kl"] != "" for i in (1, 2, 3))
    last = json.loads((run / "updates.jsonl").read_text().splitlines()[-1])
    assert len(last["ratio_hist"]) == 40 and last["minibatches"] == 2 and last["grad_norm"] >= 0
    assert main(["doctor", str(run)]) == 0
    out = capsys.readouterr().out
    assert "(llm grpo: tiny, 3 updates)" in out and "clip_fraction" in out
    assert main(["plot", str(run), "-o", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 0


@pytest.mark.slow
def test_two_rank_grpo_resumes_bitwise(tmp_path, capsys):
    """Each rank's random streams are saved and restored: --nproc 2 resumed from step 2 ends as the
    uninterrupted --nproc 2 run (the launcher bounds every rank's wait and reaps them)."""
    from safetensors.torch import load_file
    common = ["llm", "grpo", "--init", "tiny", "--save-every", "2", "--eval-every", "2", "--prompts-per-step", "4",
              "--group-size", "2", "--num-eval-prompts", "4", "--max-new-tokens", "4", "--torch-threads", "1",
              "--quiet", "--no-tensorboard", "--nproc", "2"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main([*common, "--steps", "4", "--run-dir", str(whole)]) == 0
    assert main([*common, "--steps", "2", "--run-dir", str(part)]) == 0
    assert main(["llm", "grpo", "--resume", str(part), "--steps", "4", "--nproc", "2", "--quiet"]) == 0
    a, b = (load_file(str(run / "model" / "model.safetensors")) for run in (whole, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((part / "checkpoints" / "step_000000000004" / "state.json").read_text())
    assert state["world"] == {"size": 2} and len(state["ranks"]) == 2 and state["ranks"][0] != state["ranks"][1]
