"""The LLM-side math: group advantages, GRPO and PPO-RLHF losses against hand computations,
masked reductions with padding, KL to an identical reference, Bradley-Terry."""
import math

import pytest
import torch

from proximo.core import kl_estimate, masked_mean, masked_whiten, policy_loss, value_loss
from proximo.errors import ProximoError
from proximo.llm.grpo import grpo_token_loss
from proximo.llm.losses import (
    aggregate_loss, bradley_terry_loss, group_advantages, last_token_index, rlhf_token_rewards, token_gae,
)


def test_group_advantages_zero_mean_and_unit_std_per_group():
    torch.manual_seed(0)
    rewards = torch.rand(6 * 4)
    scaled = group_advantages(rewards, 4, scale=True, eps=0.0).view(6, 4)
    centred = group_advantages(rewards, 4, scale=False).view(6, 4)
    assert torch.allclose(scaled.mean(1), torch.zeros(6), atol=1e-6)
    assert torch.allclose(scaled.std(1), torch.ones(6), atol=1e-5)
    assert torch.allclose(centred.mean(1), torch.zeros(6), atol=1e-6)
    assert torch.allclose(centred, rewards.view(6, 4) - rewards.view(6, 4).mean(1, keepdim=True))


def test_group_advantages_constant_group_is_zero_and_groups_do_not_mix():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    adv = group_advantages(rewards, 3)
    assert torch.equal(adv[:3], torch.zeros(3))
    # second group: mean 1/3, unbiased std sqrt(1/3)
    expected = (torch.tensor([0.0, 1.0, 0.0]) - 1 / 3) / (math.sqrt(1 / 3) + 1e-4)
    assert torch.allclose(adv[3:], expected, atol=1e-6)


def test_group_advantages_reject_bad_groups():
    with pytest.raises(ProximoError, match="group_size"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ProximoError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)


def test_masked_means_ignore_padding_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    garbage = x.clone()
    garbage[1, 1:] = 1e6
    for values in (x, garbage):
        assert masked_mean(values, mask).item() == pytest.approx(10 / 4)
        assert torch.allclose(masked_mean(values, mask, dim=1), torch.tensor([2.0, 4.0]))
        assert aggregate_loss(values, mask, "token-mean").item() == pytest.approx(2.5)
        assert aggregate_loss(values, mask, "seq-mean").item() == pytest.approx((2.0 + 4.0) / 2)
        assert aggregate_loss(values, mask, "constant", 5.0).item() == pytest.approx(10 / (2 * 5))
    whitened = masked_whiten(garbage, mask)
    assert torch.equal(whitened[1, 1:], torch.zeros(2))
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-6)


def _hand_clip(new, old, adv, low, high):
    r = math.exp(new - old)
    return -min(r * adv, min(max(r, 1 - low), 1 + high) * adv)


@pytest.mark.parametrize("aggregation", ["seq-mean", "token-mean", "constant"])
@pytest.mark.parametrize("clip_high", [None, 0.28])
def test_grpo_loss_equals_hand_computation(aggregation, clip_high):
    new = torch.tensor([[-0.5, -1.0, -0.2], [-2.0, -0.1, -9.0]])
    old = torch.tensor([[-0.9, -1.0, -0.1], [-1.5, -0.4, -3.0]])
    ref = torch.tensor([[-0.7, -1.2, -0.3], [-1.0, -0.2, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.5, -0.5])
    beta, low = 0.1, 0.2
    high = low if clip_high is None else clip_high
    per = [[0.0] * 3 for _ in range(2)]
    for b in range(2):
        for t in range(3):
            if mask[b, t]:
                log_ratio = ref[b, t].item() - new[b, t].item()
                k3 = math.exp(log_ratio) - 1 - log_ratio
                per[b][t] = _hand_clip(new[b, t].item(), old[b, t].item(), adv[b].item(), low, high) + beta * k3
    if aggregation == "seq-mean":
        expected = (sum(per[0]) / 3 + sum(per[1]) / 2) / 2
    elif aggregation == "token-mean":
        expected = (sum(per[0]) + sum(per[1])) / 5
    else:
        expected = (sum(per[0]) + sum(per[1])) / (2 * 4.0)
    loss, out, _ = grpo_token_loss(new, old, ref, adv, mask, low, clip_high, beta, aggregation, 4.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the clipped token (ratio e^0.4 > 1.2 with A > 0) counts in the clip fraction
    assert out.clip_fraction.item() > 0


def test_kl_is_zero_when_policy_equals_reference():
    logp = torch.log(torch.tensor([[0.2, 0.5], [0.9, 0.3]]))
    for kind in ("k1", "k2", "k3"):
        assert torch.equal(kl_estimate(logp, logp.clone(), kind), torch.zeros(2, 2))
    mask = torch.ones(2, 2)
    _, _, kl_ref = grpo_token_loss(logp, logp, logp.clone(), torch.ones(2), mask, 0.2, None, 0.1, "token-mean")
    assert kl_ref.item() == 0.0


def test_rlhf_rewards_and_gae_equal_hand_computation():
    logp = torch.tensor([[-1.0, -0.5, -0.2], [-0.3, -0.6, 0.0]])
    ref = torch.tensor([[-1.2, -0.5, -0.1], [-0.1, -0.9, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.4, 7.0]])
    scores = torch.tensor([2.0, -1.0])
    beta, lam, gamma = 0.1, 0.9, 1.0
    rewards, kl = rlhf_token_rewards(scores, logp, ref, mask, beta, "k1")
    hand_r = [[-beta * (logp[b, t] - ref[b, t]).item() * mask[b, t].item() for t in range(3)] for b in range(2)]
    hand_r[0][2] += 2.0
    hand_r[1][1] += -1.0
    assert torch.allclose(rewards, torch.tensor(hand_r), atol=1e-6)
    assert torch.equal(last_token_index(mask), torch.tensor([2, 1]))
    adv, ret = token_gae(rewards, values, mask, gamma, lam)
    for b, length in ((0, 3), (1, 2)):
        running = 0.0
        for t in reversed(range(length)):
            next_v = values[b, t + 1].item() if t + 1 < length else 0.0
            delta = hand_r[b][t] + gamma * next_v - values[b, t].item()
            running = delta + gamma * lam * running
            assert adv[b, t].item() == pytest.approx(running, abs=1e-6)
            assert ret[b, t].item() == pytest.approx(running + values[b, t].item(), abs=1e-6)
    assert adv[1, 2].item() == 0.0 and ret[1, 2].item() == 0.0


def test_ppo_policy_and_value_losses_equal_hand_computation_on_tokens():
    new = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]])
    old = torch.tensor([[-0.9, -1.0], [-1.5, -0.4]])
    adv = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = policy_loss(new, old, adv, "clip", 0.2, mask=mask)
    hand = [_hand_clip(new[b, t].item(), old[b, t].item(), adv[b, t].item(), 0.2, 0.2)
            for b, t in ((0, 0), (0, 1), (1, 0))]
    assert out.loss.item() == pytest.approx(sum(hand) / 3, rel=1e-6)
    v_new = torch.tensor([[1.0, 0.0], [0.5, 9.0]])
    v_old = torch.tensor([[0.5, 0.2], [0.4, 0.0]])
    ret = torch.tensor([[2.0, -1.0], [0.0, 0.0]])
    hand_v = []
    for b, t in ((0, 0), (0, 1), (1, 0)):
        vn, vo, r = v_new[b, t].item(), v_old[b, t].item(), ret[b, t].item()
        clipped = vo + min(max(vn - vo, -0.2), 0.2)
        hand_v.append(max((vn - r) ** 2, (clipped - r) ** 2))
    assert value_loss(v_new, v_old, ret, 0.2, mask).item() == pytest.approx(sum(hand_v) / 3, rel=1e-6)


def test_bradley_terry_loss_equals_hand_computation():
    chosen = torch.tensor([1.0, -0.5, 2.0])
    rejected = torch.tensor([0.0, 0.5, 2.0])
    hand = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(chosen.tolist(), rejected.tolist())) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(hand, rel=1e-6)


def test_aggregate_loss_rejects_bad_modes():
    with pytest.raises(ProximoError, match="unknown loss aggregation"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum")
    with pytest.raises(ProximoError, match="positive constant"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "constant", None)


def test_the_one_shuffler_keeps_groups_whole_and_covers_every_row():
    from proximo.ppo import minibatch_rows
    torch.manual_seed(0)
    batches = [rows for _ in range(2) for rows in minibatch_rows(24, 8, block=4)]
    assert len(batches) == 6 and all(len(b) == 8 for b in batches)
    for epoch in (batches[:3], batches[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(24))
        for b in epoch:
            groups = (b // 4).tolist()
            assert all(groups.count(g) == 4 for g in set(groups))
            for start in (0, 4):  # each group's rows together and in order
                assert b[start:start + 4].tolist() == list(range(int(b[start]), int(b[start]) + 4))
    # 5 groups do not split into 2 minibatches: rows are shuffled one by one, still a full cover
    rows = minibatch_rows(20, 10, block=4)
    assert sorted(torch.cat(rows).tolist()) == list(range(20))