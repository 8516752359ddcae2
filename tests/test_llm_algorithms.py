"""The GRPO variants on hand-made tensors, against numbers worked out by hand: loss aggregations (grpo,
bnpo, dr_grpo, dapo across minibatches), GRPO/RLOO advantages with group/batch/no scaling and skipped
samples, REINFORCE++ returns, GSPO's sequence ratio and its gradient, DAPO's group filter and overlong
mask; then each flag through one real GRPO step."""
import math

import pytest
import torch

from proximo.errors import ConfigError, ProximoError
from proximo.llm import GRPO, GRPOConfig
from proximo.llm.losses import (
    aggregate_loss, group_advantages, grpo_token_loss, informative_groups, reinforce_pp_advantages,
    truncated_rows,
)

PER = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize("mode, alias, expected", [
    ("grpo", "seq-mean", (2.0 + 4.5) / 2),        # row means 6/3 and 9/2
    ("bnpo", "token-mean", 15 / 5),               # 15 over 5 real tokens
    ("dr_grpo", "constant", 15 / (2 * 4.0)),      # 15 over B x constant
    ("dapo", None, 15 / (10 / 2)),                # 15 over (10 batch tokens / 2 minibatches)
])
def test_aggregations_equal_hand_numbers(mode, alias, expected):
    got = aggregate_loss(PER, MASK, mode, constant=4.0, batch_tokens=10.0, num_minibatches=2)
    assert got.item() == pytest.approx(expected)
    if alias is not None:
        assert aggregate_loss(PER, MASK, alias, constant=4.0).item() == pytest.approx(expected)


def test_grpo_aggregation_skips_rows_with_no_tokens_and_dapo_alone_is_bnpo():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    assert aggregate_loss(PER, mask, "grpo").item() == pytest.approx(2.0)   # one real row, not (2 + 0) / 2
    assert aggregate_loss(PER, MASK, "dapo").item() == pytest.approx(3.0)   # no batch count: this batch


def test_dapo_is_the_whole_batch_token_mean_across_minibatches_and_bnpo_is_not():
    # 4 rows: A = (1, 2, 3), B = (4), C = (5, 6), D = (7); minibatches {A, B} (4 tokens) and {C, D} (3 tokens)
    per = torch.tensor([[1.0, 2, 3], [4, 0, 0], [5, 6, 0], [7, 0, 0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    whole = 28 / 7
    halves = [slice(0, 2), slice(2, 4)]
    dapo = [aggregate_loss(per[h], mask[h], "dapo", batch_tokens=7.0, num_minibatches=2) for h in halves]
    bnpo = [aggregate_loss(per[h], mask[h], "bnpo") for h in halves]
    assert [d.item() for d in dapo] == pytest.approx([10 / 3.5, 18 / 3.5])
    assert sum(d.item() for d in dapo) / 2 == pytest.approx(whole)
    assert sum(b.item() for b in bnpo) / 2 == pytest.approx((2.5 + 6.0) / 2)   # 4.25, not the token mean 4
    # every real token weighs the same, 2/7, in whichever minibatch it falls
    sum(dapo).backward()
    assert torch.allclose(per.grad[mask.bool()], torch.full((7,), 2 / 7))


REWARDS = torch.tensor([1.0, 0.0, 2.0, 3.0, 3.0, 0.0])   # two groups of 3


def test_grpo_advantages_with_group_batch_and_no_scaling():
    dev = [0.0, -1.0, 1.0, 1.0, 1.0, -2.0]          # minus group means 1 and 2
    group_std = [1.0] * 3 + [math.sqrt(3.0)] * 3     # unbiased: sqrt(2/2), sqrt(6/2)
    batch_std = math.sqrt(9.5 / 5)                   # unbiased std of all six rewards (mean 1.5)
    cases = {"none": [1.0] * 6, "group": group_std, "batch": [batch_std] * 6}
    for scale, std in cases.items():
        got = group_advantages(REWARDS, 3, scale, eps=0.0)
        assert got.tolist() == pytest.approx([d / s for d, s in zip(dev, std)]), scale
    assert torch.equal(group_advantages(REWARDS, 3, True), group_advantages(REWARDS, 3, "group"))
    assert torch.equal(group_advantages(REWARDS, 3, False), group_advantages(REWARDS, 3, "none"))


def test_rloo_advantage_is_reward_minus_the_mean_of_the_others():
    got = group_advantages(REWARDS, 3, "none", estimator="rloo")
    # 1 - (0 + 2)/2, 0 - (1 + 2)/2, 2 - (1 + 0)/2, 3 - (3 + 0)/2, 3 - (3 + 0)/2, 0 - (3 + 3)/2
    assert got.tolist() == pytest.approx([0.0, -1.5, 1.5, 1.5, 1.5, -3.0])


def test_skipped_samples_get_zero_advantage_and_leave_the_group_statistics():
    rewards = torch.tensor([1.0, 99.0, 2.0, 3.0, 3.0, 0.0])
    valid = torch.tensor([True, False, True, True, True, True])
    grpo = group_advantages(rewards, 3, "none", valid=valid)
    assert grpo.tolist()[:3] == pytest.approx([-0.5, 0.0, 0.5])            # mean of 1 and 2 only
    rloo = group_advantages(rewards, 3, "none", estimator="rloo", valid=valid)
    assert rloo.tolist()[:3] == pytest.approx([-1.0, 0.0, 1.0])             # 1 - 2, 2 - 1
    scaled = group_advantages(rewards, 3, "group", eps=0.0, valid=valid)
    assert scaled.tolist()[:3] == pytest.approx([-0.5 / math.sqrt(0.5), 0.0, 0.5 / math.sqrt(0.5)])
    lone = group_advantages(rewards, 3, "group", valid=torch.tensor([True, False, False] + [True] * 3))
    assert lone.tolist()[:3] == [0.0, 0.0, 0.0]                             # one valid member: no signal


def test_reinforce_pp_returns_fold_the_kl_and_are_standardized_over_the_batch():
    scores = torch.tensor([1.0, -1.0])
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -1.0, 0.0]])
    beta = 0.1
    # k1 = logp - ref: (0.5, 0, -1) and (0, 0.5); rewards -beta k1 plus the score at the last token
    rewards = [[-0.05, 0.0, 0.1 + 1.0], [0.0, -0.05 - 1.0]]
    returns = [1.05, 1.1, 1.1, -1.05, -1.05]                 # reward-to-go, row 0 then row 1
    mean = sum(returns) / 5
    std = math.sqrt(sum((g - mean) ** 2 for g in returns) / 4)
    got = reinforce_pp_advantages(scores, logp, ref, MASK, beta)
    hand = [(g - mean) / std for g in returns]
    assert got[MASK.bool()].tolist() == pytest.approx(hand, rel=1e-5)
    assert got[1, 2].item() == 0.0
    assert rewards[0][2] == pytest.approx(1.1)


def test_reinforce_pp_baseline_is_reinforce_pp_on_group_centred_scores():
    # scores (3, 1 | 0, 2) in groups of 2 become (1, -1 | -1, 1); each one-token row's return is its score
    logp = torch.zeros(4, 1)
    centred = group_advantages(torch.tensor([3.0, 1.0, 0.0, 2.0]), 2, "none")
    assert centred.tolist() == [1.0, -1.0, -1.0, 1.0]
    got = reinforce_pp_advantages(centred, logp, None, torch.ones(4, 1), 0.0)
    std = math.sqrt(4 / 3)                           # unbiased std of (1, -1, -1, 1), mean 0
    assert got.flatten().tolist() == pytest.approx([1 / std, -1 / std, -1 / std, 1 / std], rel=1e-6)


def test_gspo_sequence_ratio_clip_and_gradient():
    # float64: the ratios sit within 4e-4 of 1, below float32's resolution for a 1e-7 check
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -4.0]], dtype=torch.float64)
    shift = torch.tensor([[1e-4, -1e-4, 3e-4], [0.01, 0.03, 5.0]], dtype=torch.float64)  # row 1's last: padding
    new = (old + shift).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    s0 = math.exp(1e-4)          # exp of the mean log-ratio over row 0's real tokens (row 1: exp(0.02))
    loss, out, _ = grpo_token_loss(new, old, None, adv, MASK, 3e-4, 4e-4, 0.0, "grpo",
                                   importance_sampling="sequence")
    # row 0 is inside (1 - 3e-4, 1 + 4e-4): -s0; row 1 is above with A > 0: clipped to -(1 + 4e-4)
    assert loss.item() == pytest.approx((-s0 - (1 + 4e-4)) / 2, rel=1e-7)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    loss.backward()
    # d/d logp_0t of -s0 / 2 = -s0 / (2 x 3); the clipped row and the padding get nothing
    assert new.grad[0].tolist() == pytest.approx([-s0 / 6] * 3, rel=1e-6)
    assert new.grad[1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ProximoError, match="one advantage per sequence"):
        grpo_token_loss(new, old, None, torch.ones(2, 3, dtype=torch.float64), MASK, 3e-4, 4e-4, 0.0, "grpo",
                        importance_sampling="sequence")


def test_token_advantages_per_token_match_the_hand_clip():
    new = torch.tensor([[-0.5, -1.0, -0.2], [-2.0, -0.1, -9.0]])
    old = torch.tensor([[-0.9, -1.0, -0.1], [-1.5, -0.4, -3.0]])
    adv = torch.tensor([[1.0, -2.0, 0.5], [3.0, -1.0, 7.0]])
    loss, _, _ = grpo_token_loss(new, old, None, adv, MASK, 0.2, None, 0.0, "bnpo")
    hand = []
    for b, t in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1)):
        r, a = math.exp(new[b, t].item() - old[b, t].item()), adv[b, t].item()
        hand.append(-min(r * a, min(max(r, 0.8), 1.2) * a))
    assert loss.item() == pytest.approx(sum(hand) / 5, abs=1e-6)


def test_dynamic_sampling_filter_and_overlong_mask():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 5.0, 2.0])
    assert informative_groups(rewards, 3).tolist() == [False, True, True]
    # the third group's valid members (2, 2) are equal once the 5 is skipped
    valid = torch.tensor([True] * 7 + [False, True])
    assert informative_groups(rewards, 3, valid).tolist() == [False, True, False]
    ids = torch.tensor([[5, 2, 0], [5, 6, 7], [2, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert truncated_rows(ids, mask, eos_id=2).tolist() == [False, True, False]


def test_config_accepts_old_spellings_and_rejects_bad_values():
    old = GRPOConfig.from_dict({"scale_rewards": False, "loss_aggregation": "constant"})
    assert (old.scale_rewards, old.loss_aggregation) == ("none", "dr_grpo")
    assert GRPOConfig(scale_rewards=True).scale_rewards == "group"
    assert GRPOConfig(scale_rewards="false").scale_rewards == "none"
    for bad, message in [(dict(scale_rewards="std"), "scale_rewards must be one of group, batch, none"),
                         (dict(advantage_estimator="ppo"), "advantage_estimator must be one of"),
                         (dict(importance_sampling="seq"), "importance_sampling must be one of"),
                         (dict(importance_sampling="sequence", advantage_estimator="reinforce++"), "GSPO"),
                         (dict(seq_clip_range=0.0), "seq_clip_range must lie in"),
                         (dict(max_extra_draws=-1), "max_extra_draws must not be negative")]:
        with pytest.raises(ConfigError, match=message):
            GRPOConfig(**bad)


FAST = dict(num_eval_prompts=2, tensorboard=False, steps=1, prompts_per_step=4, group_size=4, max_new_tokens=4,
            eval_every=0)
PROMPTS = ["ab", "ba", "aa", "bb"]


def _length(prompts, completions):
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize("flags", [
    dict(advantage_estimator="rloo", scale_rewards="none", loss_aggregation="dr_grpo"),
    dict(advantage_estimator="reinforce++", kl_coef=0.1, loss_aggregation="dapo"),
    dict(importance_sampling="sequence", loss_aggregation="grpo", scale_rewards="batch"),
    dict(advantage_estimator="reinforce++-baseline", mask_truncated=True, loss_aggregation="bnpo"),
])
def test_each_variant_runs_a_step(tmp_path, flags):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, **FAST, **flags)
    summary = trainer.train()
    row = trainer.history[0]
    assert summary["steps"] == 1 and math.isfinite(row["policy_loss"])


def test_several_optimizer_steps_per_generation_keep_the_generation_log_probs(tmp_path):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, n_epochs=2, num_minibatches=2,
                   learning_rate=1e-2, **FAST)
    optimizer = trainer.make_optimizer()
    batch = trainer.collect()
    kept = batch.old_logp.clone()
    row = trainer.learn(batch, optimizer)
    assert row["optimizer_steps"] == 4
    assert torch.equal(batch.old_logp, kept)
    # after the updates the policy has moved away from the kept log-probs: the ratio is not 1
    from proximo.llm.generation import response_logprobs
    with torch.no_grad():
        now, _, _ = response_logprobs(trainer.model, batch.input_ids, batch.attention, batch.width)
    assert float(((now - kept).abs() * batch.mask).max()) > 1e-3


def test_dynamic_sampling_drops_all_equal_groups_and_is_bounded(tmp_path):
    def only_ab_varies(prompts, completions):
        return [float(len(c)) if p == "ab" else 1.0 for p, c in zip(prompts, completions)]
    trainer = GRPO("tiny", reward_fn=only_ab_varies, prompts=PROMPTS, run_dir=tmp_path, dynamic_sampling=True,
                   max_extra_draws=3, **{**FAST, "max_new_tokens": 6})
    torch.manual_seed(0)
    batch = trainer.collect()
    stats = batch.stats
    assert stats["groups_drawn"] in (4, 8, 12, 16)
    per_group = batch.advantages.view(-1, 4)
    informative = (per_group.abs().sum(1) > 0).sum().item()
    assert informative + stats["groups_filled"] == 4
    assert informative >= 1 and stats["groups_dropped"] >= 1   # 3 of the 4 prompts never vary
    assert stats["groups_dropped"] + informative + stats["groups_filled"] <= stats["groups_drawn"]
    # the trained batch's groups without reward spread: the ones that filled it
    assert stats["zero_std_fraction"] == stats["groups_filled"] / 4
    # never more than 1 + max_extra_draws rounds; a reward that never varies fills the batch at the bound
    flat = GRPO("tiny", reward_fn=lambda p, c: [1.0] * len(c), prompts=PROMPTS, run_dir=tmp_path / "flat",
                dynamic_sampling=True, max_extra_draws=2, **FAST)
    stats = flat.collect().stats
    assert (stats["groups_drawn"], stats["groups_filled"], stats["groups_dropped"]) == (12, 4, 8)
    assert stats["zero_std_fraction"] == 1.0


def test_truncated_completions_get_loss_mask_zero(tmp_path):
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, mask_truncated=True,
                   **{**FAST, "max_new_tokens": 2})
    torch.manual_seed(0)
    batch = trainer.collect()
    rows = batch.input_ids[:, batch.width:]
    response_mask = batch.attention[:, batch.width:]
    truncated = truncated_rows(rows, response_mask, trainer.tokenizer.eos_id)
    assert truncated.any()  # a random model rarely says <eos> within 2 tokens
    assert torch.equal(batch.mask.sum(1) == 0, truncated)
    assert batch.stats["truncated_fraction"] == pytest.approx(truncated.float().mean().item())


def test_samples_no_reward_function_scores_are_skipped(tmp_path):
    def not_for_aa(prompts, completions):
        return [None if p == "aa" else float(len(c)) for p, c in zip(prompts, completions)]
    trainer = GRPO("tiny", reward_fn=not_for_aa, prompts=["aa", "ab"], run_dir=tmp_path, **FAST)
    torch.manual_seed(1)
    batch = trainer.collect()
    texts = [trainer.tokenizer.decode(row.tolist()) for row in batch.input_ids[:, :batch.width]]
    skipped = torch.tensor([t == "aa" for t in texts])
    assert skipped.any()
    assert torch.equal(batch.mask.sum(1) == 0, skipped)            # loss mask 0
    assert torch.equal(batch.advantages[skipped], torch.zeros(int(skipped.sum())))
    assert batch.stats["skipped_fraction"] == pytest.approx(skipped.float().mean().item())


def test_concatenated_rollouts_keep_every_log_prob():
    from proximo.llm.generation import concat_rollouts, generate, response_logprobs
    from proximo.llm.models import load_model
    from proximo.llm.run import encode_prompts
    model, tokenizer, _ = load_model("tiny", seed=0)
    torch.manual_seed(0)
    parts = []
    for prompts, new in ((["1+2="], 2), (["12+345=", "9="], 5)):
        ids, mask = encode_prompts(tokenizer, prompts)
        parts.append(generate(model, ids, mask, new, tokenizer.eos_id, tokenizer.pad_id))
    both = concat_rollouts(parts, tokenizer.pad_id)
    assert both.prompt_ids.shape[1] == parts[1].prompt_ids.shape[1]
    assert both.response_ids.shape[1] == max(p.response_ids.shape[1] for p in parts)
    with torch.no_grad():
        logp, _, _ = response_logprobs(model, both.input_ids, both.attention_mask, both.prompt_ids.shape[1])
    mask = both.response_mask.bool()
    # the sampler's log-probs, padded into the wider batch, equal a forward pass over it
    assert torch.allclose(logp[mask], both.logprobs[mask], atol=1e-5)
    assert torch.equal(both.select(torch.tensor([1, 2])).response_ids[:, :parts[1].response_ids.shape[1]],
                       parts[1].response_ids)


def test_the_trainer_gives_dapo_the_whole_batch_token_count(tmp_path, monkeypatch):
    import proximo.llm.grpo as grpo_module
    seen = []

    def spy(*args, **options):
        seen.append((args[-3], args[-2], float(args[4].sum()), args[-1]))  # batch_tokens, minibatches, this
        # minibatch's tokens, the normalizer (the surrogate and KL options come as keywords)
        return grpo_token_loss(*args, **options)
    monkeypatch.setattr(grpo_module, "grpo_token_loss", spy)
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, loss_aggregation="dapo",
                   num_minibatches=2, **FAST)
    batch = trainer.collect()
    trainer.learn(batch, trainer.make_optimizer())
    whole = float(batch.mask.sum())
    assert [(s[0], s[1]) for s in seen] == [(whole, 2), (whole, 2)]
    assert sum(s[2] for s in seen) == whole   # the two minibatches split the batch's tokens
    assert [s[3] for s in seen] == [whole / 2, whole / 2]
