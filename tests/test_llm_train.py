"""End to end in seconds: sft, rm, rlhf and grpo runs on tiny random models write the run layout;
tasks keep held-out prompts apart; bad inputs raise ProximoError with a clear message."""
import csv
import json
import random

import pytest
import torch

from proximo.cli import main
from proximo.errors import ProximoError
from proximo.llm import GRPO, RLHF, SFT, GRPOConfig, RewardModel, RLHFConfig, get_task, train_reward_model
from proximo.llm.run import LLM_COLUMNS

FAST = dict(num_eval_prompts=16, tensorboard=False)


def _check_run_dir(path, kind):
    config = json.loads((path / "config.json").read_text())
    assert config["kind"] == kind
    with open(path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and list(rows[0]) == LLM_COLUMNS
    summary = json.loads((path / "summary.json").read_text())
    assert (path / "model" / "model.safetensors").is_file()
    assert (path / "model" / "config.json").is_file()
    return rows, summary


def test_tasks_answers_rewards_and_disjoint_held_out_sets():
    add = get_task("add")
    assert add.answer("123+456=") == "579"
    assert add.reward(["123+456=", "1+1="], ["579", "3"]) == [1.0, 0.0]
    held = set(add.held_out_prompts(300))
    assert len(held) == 300 and held == set(add.held_out_prompts(300))
    train = set(add.sample_prompts(random.Random(0), 5000))
    assert not held & train
    sort = get_task("sort", 4)
    assert sort.answer("sort 3141=") == "1134"
    rng = random.Random(1)
    for prompt, chosen, rejected in add.preference_pairs(rng, 50):
        assert add.reward([prompt], [chosen]) == [1.0] and add.reward([prompt], [rejected]) == [0.0]


def test_sft_then_grpo_cli_and_rlhf_end_to_end(tmp_path, capsys):
    sft_dir, rm_dir = tmp_path / "sft", tmp_path / "rm"
    summary = SFT("tiny", run_dir=sft_dir, max_steps=3, batch_size=16, eval_every=0, digits=2,
                  **FAST).train()
    assert summary["steps"] == 3 and 0.0 <= summary["eval_sampled_accuracy"] <= 1.0
    _check_run_dir(sft_dir, "sft")

    code = main(["llm", "grpo", "--init", str(sft_dir), "--run-dir", str(tmp_path / "grpo"), "--steps", "2",
                 "--prompts-per-step", "4", "--group-size", "4", "--num-eval-prompts", "16", "--quiet",
                 "--no-tensorboard", "--clip-range-high", "0.28", "--kl-coef", "0.04",
                 "--loss-aggregation", "seq-mean"])
    assert code == 0
    rows, grpo_summary = _check_run_dir(tmp_path / "grpo", "grpo")
    assert json.loads((tmp_path / "grpo" / "config.json").read_text())["config"]["digits"] == 2
    assert len(rows) == 3 and float(rows[1]["kl_ref"]) >= 0.0 and rows[1]["entropy"] != ""
    assert "accuracy (exact answers of the add task) on 16 held-out prompts:" in capsys.readouterr().out

    rm_summary = train_reward_model(sft_dir, run_dir=rm_dir, max_steps=3, batch_size=8, train_pairs=64,
                                    eval_pairs=16, digits=2, **FAST)
    assert 0.0 <= rm_summary["pairwise_accuracy"] <= 1.0
    # saved in transformers' reward-model form: a sequence classifier with one label, no proximo head file
    rm_config = json.loads((rm_dir / "model" / "config.json").read_text())
    assert rm_config["architectures"] == ["GPT2ForSequenceClassification"] and len(rm_config["id2label"]) == 1
    assert not (rm_dir / "model" / "reward_head.safetensors").exists()
    trainer = RLHF(sft_dir, reward_model=rm_dir, run_dir=tmp_path / "rlhf", steps=2, prompts_per_step=8,
                   num_minibatches=2, digits=2, **FAST)
    # the critic starts as a copy of the reward model: same score for the same text
    with torch.no_grad():
        texts = (["1+2=", "10+20="], ["3", "31"])
        assert torch.allclose(trainer.critic.score_texts(*texts), trainer.reward_model.score_texts(*texts))
    rlhf_summary = trainer.train()
    rows, _ = _check_run_dir(tmp_path / "rlhf", "rlhf")
    assert rows[1]["score"] != "" and rows[1]["value_loss"] != ""
    # completions cut at max_new_tokens: a fraction of the step's completions
    assert all(0.0 <= row["truncated_fraction"] <= 1.0 for row in trainer.history)
    assert rlhf_summary["steps"] == 2
    # the first step's KL to the reference is 0: the policy is the reference when it samples
    assert trainer.history[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    # training moves the critic, never the frozen reward model
    with torch.no_grad():
        assert not torch.allclose(trainer.critic.score_texts(*texts), trainer.reward_model.score_texts(*texts))
    # the other critic: a value head on the policy trunk, saved next to the policy
    head_run = RLHF(sft_dir, reward_model=rm_dir, run_dir=tmp_path / "rlhf-head", steps=1, prompts_per_step=8,
                    num_minibatches=2, digits=2, critic="head", normalize_scores=True,
                    kl_controller="adaptive", **FAST)
    head_run.train()
    assert (tmp_path / "rlhf-head" / "model" / "value_head.safetensors").is_file()


def test_grpo_python_api_with_a_custom_reward(tmp_path):
    def longer_is_better(prompts, completions):
        return [float(len(c)) for c in completions]

    trainer = GRPO("tiny", reward_fn=longer_is_better, prompts=["ab", "ba", "aa"], run_dir=tmp_path,
                   steps=1, prompts_per_step=2, group_size=2, max_new_tokens=5, num_eval_prompts=3,
                   tensorboard=False, keep_reference=True)
    summary = trainer.train()
    assert summary["steps"] == 1 and len(trainer.generate(["ab"])) == 1
    assert all(not p.requires_grad for p in trainer.reference.parameters())
    assert trainer.history[0]["reward"] >= 0.0
    # the health rules saw the update (the evaluation row before training is not an update)
    assert trainer.run.monitor.history.updates == [1]


def test_grpo_logs_the_fraction_of_groups_without_reward_spread(tmp_path):
    # one reward for every completion: every group has zero spread; a distinct reward per completion: none has
    for reward, expected in [(lambda p, c: [1.0] * len(c), 1.0), (lambda p, c: [float(i) for i in range(len(c))], 0.0)]:
        trainer = GRPO("tiny", reward_fn=reward, prompts=["ab", "ba", "aa"], run_dir=tmp_path / str(expected),
                       steps=1, prompts_per_step=2, group_size=2, max_new_tokens=3, num_eval_prompts=2,
                       tensorboard=False)
        trainer.train()
        assert trainer.history[0]["zero_std_fraction"] == expected


def test_reward_model_scores_and_round_trips(tmp_path):
    train_reward_model("tiny", run_dir=tmp_path, max_steps=2, batch_size=4, train_pairs=16, eval_pairs=8, **FAST)
    rm = RewardModel.load(tmp_path)
    scores = rm.score_texts(["1+2=", "10+20="], ["3", "30"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # the same text scores the same alone and in a padded batch
    alone = rm.score_texts(["1+2="], ["3"])
    assert torch.allclose(alone, scores[:1], atol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: GRPOConfig(group_size=1), "group_size must be at least 2"),
    (lambda: GRPOConfig(loss_aggregation="sum"), "loss_aggregation must be one of"),
    (lambda: GRPOConfig(prompts_per_step=3, group_size=2, num_minibatches=4), "does not divide"),
    (lambda: GRPOConfig(clip_range=1.5), "clip_range must lie in"),
    (lambda: GRPOConfig(learning_rate="fast"), "learning_rate must be of type float"),
    (lambda: RLHFConfig(kl_estimator="k4"), "kl_estimator must be one of"),
    (lambda: RLHFConfig(critic="none"), "critic must be"),
    (lambda: get_task("multiply"), "unknown task 'multiply'"),
    (lambda: GRPO("huge"), "unknown built-in model|neither a model directory"),
    (lambda: GRPO("tiny", task="", prompts=["a"]), "pass both prompts"),
    (lambda: RLHF("tiny"), "needs a reward: reward_model=DIR"),
])
def test_bad_inputs_raise_clear_errors(make, message):
    with pytest.raises(ProximoError, match=message):
        make()


def test_reward_fn_returning_wrong_length_is_a_clear_error(tmp_path):
    trainer = GRPO("tiny", reward_fn=lambda p, c: [1.0], prompts=["ab"], run_dir=tmp_path, steps=1,
                   prompts_per_step=2, group_size=2, max_new_tokens=3, num_eval_prompts=1, tensorboard=False)
    with pytest.raises(ProximoError, match="returned 1 rewards for"):
        trainer.train()


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    assert main(["llm", "grpo", "--init", "tiny", "--group-size", "1", "--run-dir", str(tmp_path)]) == 2
    assert "group_size must be at least 2" in capsys.readouterr().err
    assert main(["llm", "sft", "--task", "nope", "--run-dir", str(tmp_path)]) == 2
    assert main(["llm", "eval", str(tmp_path / "missing")]) == 2


def test_grpo_flat_fused_adam_steps_like_per_tensor_adamw_and_saves(tmp_path):
    from proximo.learners.optimizer import FlatOptimizer
    from proximo.llm.models import load_model
    def ones(prompts, completions):  # a reward that varies within groups of a random model
        return [float(c.count("1") + len(c)) for c in completions]
    settings = dict(prompts_per_step=4, group_size=4, num_minibatches=1, learning_rate=1e-2, steps=2,
                    reward_fn=ones, prompts=["12+3=", "4+56=", "7+8=", "99+1="], max_new_tokens=5, **FAST)
    flat_trainer = GRPO("tiny", run_dir=tmp_path / "flat", **settings)
    plain_trainer = GRPO("tiny", run_dir=tmp_path / "plain", **settings)
    flat_opt = flat_trainer.make_optimizer()
    # AdamW over the separate parameter tensors, the per-tensor path behind the same object
    plain_opt = FlatOptimizer(plain_trainer.trainable_parameters(), lr=1e-2, eps=plain_trainer.config.adam_eps,
                              decoupled_weight_decay=True, flat=False)
    assert flat_opt.flat is not None and plain_opt.flat is None
    assert len(plain_opt.param_groups[0]["params"]) > 1
    start = {k: v.clone() for k, v in flat_trainer.model.state_dict().items()}

    def step_both(seed):
        for trainer, optimizer in ((flat_trainer, flat_opt), (plain_trainer, plain_opt)):
            torch.manual_seed(seed)  # both sample from the same global torch generator: same draws for both
            trainer.step(optimizer)

    step_both(0)
    moved = max(float((v - start[k]).abs().max()) for k, v in flat_trainer.model.state_dict().items())
    assert moved > 1e-3  # the update did something
    for (name, a), b in zip(flat_trainer.model.state_dict().items(), plain_trainer.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    # Later Adam steps divide float noise in exactly-zero gradients (e.g. key biases) by its own size, so
    # the two runs may part by a small fraction of a step there, never by whole steps.
    step_both(1)
    step_both(2)
    for (name, a), b in zip(flat_trainer.model.state_dict().items(), plain_trainer.model.state_dict().values()):
        assert float((a - b).abs().max()) < 0.1 * settings["learning_rate"], name
    # the flat buffer does not confuse saving: the saved model reloads with the trained weights
    summary = flat_trainer.train(1)
    loaded, _, _ = load_model(summary["run_dir"])
    for name, value in flat_trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
