"""The policy objectives, value loss and statistics on hand-made ratios and advantages.

The clipped-objective tables are the worked example in shared/reference/003 (eps = 0.2, A = +1 and A = -1).
"""
import math

import pytest
import torch

from proximo.core.objectives import entropy_bonus, policy_loss, value_loss

RATIOS = [0.5, 0.8, 1.0, 1.1, 1.2, 1.5, 2.0]
# L^CLIP = min(r A, clip(r, 0.8, 1.2) A) from the reference tables.
TABLE_A_POS = [0.5, 0.8, 1.0, 1.1, 1.2, 1.2, 1.2]
TABLE_A_NEG = [-0.8, -0.8, -1.0, -1.1, -1.2, -1.5, -2.0]


def objective_and_grad(ratios, advantage, **kwargs):
    logp_old = torch.zeros(len(ratios), dtype=torch.float64)
    logp_new = torch.log(torch.tensor(ratios, dtype=torch.float64)).requires_grad_(True)
    adv = torch.full((len(ratios),), float(advantage), dtype=torch.float64)
    out = policy_loss(logp_new, logp_old, adv, **kwargs)
    out.per_sample.sum().backward()
    # Gradient of the objective (= -loss) with respect to r: d/dr = d/dlogp / r.
    grad_r = -logp_new.grad / torch.tensor(ratios, dtype=torch.float64)
    return -out.per_sample.detach(), grad_r, out


@pytest.mark.parametrize("advantage,table", [(1.0, TABLE_A_POS), (-1.0, TABLE_A_NEG)])
def test_clip_objective_matches_reference_tables(advantage, table):
    objective, _, _ = objective_and_grad(RATIOS, advantage, objective="clip", clip_range=0.2)
    torch.testing.assert_close(objective, torch.tensor(table, dtype=torch.float64))


def test_clip_gradient_is_zero_exactly_where_clipped():
    _, grad_pos, _ = objective_and_grad(RATIOS, 1.0, objective="clip", clip_range=0.2)
    _, grad_neg, _ = objective_and_grad(RATIOS, -1.0, objective="clip", clip_range=0.2)
    # A = +1: slope 1 up to r = 1.2 (inclusive: the min picks r A on a tie), 0 beyond.
    assert grad_pos.tolist() == pytest.approx([1, 1, 1, 1, 1, 0, 0])
    # A = -1: slope 0 below r = 0.8 (floor at -0.8), slope -1 from there up, including r > 1.2.
    assert grad_neg.tolist() == pytest.approx([0, -1, -1, -1, -1, -1, -1])


def test_clip_fraction_and_clip_higher():
    _, _, out = objective_and_grad(RATIOS, 1.0, objective="clip", clip_range=0.2)
    assert out.clip_fraction.item() == pytest.approx(3 / 7)  # 0.5, 1.5, 2.0 are outside [0.8, 1.2]
    # clip-higher: upper bound 1 + 0.6 lets r = 1.5 through for A > 0.
    objective, _, out_high = objective_and_grad(RATIOS, 1.0, objective="clip", clip_range=0.2,
                                                clip_range_high=0.6)
    assert objective.tolist() == pytest.approx([0.5, 0.8, 1.0, 1.1, 1.2, 1.5, 1.6])
    assert out_high.clip_fraction.item() == pytest.approx(2 / 7)


def test_unclipped_objective_is_the_plain_surrogate():
    objective, grad, _ = objective_and_grad(RATIOS, -2.0, objective="none", clip_range=0.2)
    assert objective.tolist() == pytest.approx([-2 * r for r in RATIOS])
    assert grad.tolist() == pytest.approx([-2.0] * len(RATIOS))


@pytest.mark.parametrize("objective", ["fixed_kl", "adaptive_kl"])
def test_kl_penalty_objective_value_and_gradient(objective):
    beta = 3.0
    values, grad, out = objective_and_grad(RATIOS, 1.0, objective=objective, kl_coef=beta)
    for r, value, slope in zip(RATIOS, values.tolist(), grad.tolist()):
        kl = (r - 1) - math.log(r)  # k3 estimate of KL(old || new), samples from old, r = p_new / p_old
        assert value == pytest.approx(r - beta * kl)
        # d/dr [r - beta ((r - 1) - log r)] = 1 - beta (1 - 1/r)
        assert slope == pytest.approx(1 - beta * (1 - 1 / r))
    assert out.approx_kl_k3.item() == pytest.approx(sum((r - 1) - math.log(r) for r in RATIOS) / 7)


def test_approx_kl_statistics():
    _, _, out = objective_and_grad([1.0, 1.0], 1.0, objective="clip")
    assert out.approx_kl_k1.item() == 0.0 and out.approx_kl_k3.item() == 0.0
    _, _, out = objective_and_grad([0.5, 2.0], 1.0, objective="clip")
    assert out.approx_kl_k1.item() == pytest.approx(-(math.log(0.5) + math.log(2.0)) / 2)


def test_mask_excludes_samples_from_loss_and_stats():
    logp_new = torch.log(torch.tensor([1.0, 3.0]))
    out = policy_loss(logp_new, torch.zeros(2), torch.ones(2), "clip", 0.2, mask=torch.tensor([1.0, 0.0]))
    assert out.loss.item() == pytest.approx(-1.0)
    assert out.clip_fraction.item() == 0.0


def test_policy_loss_rejects_unknown_objective_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown objective"):
        policy_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), objective="trpo")
    with pytest.raises(ValueError, match="shape mismatch"):
        policy_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2))


def test_value_loss_unclipped_and_clipped_by_hand():
    new = torch.tensor([1.0, 3.0, -1.0])
    old = torch.tensor([0.0, 0.0, 0.0])
    ret = torch.tensor([2.0, 0.0, 1.0])
    assert value_loss(new, old, ret).item() == pytest.approx((1 + 9 + 4) / 3)
    # clip 0.5: clipped preds 0.5, 0.5, -0.5 -> errors 2.25, 0.25, 2.25; max with 1, 9, 4 -> 2.25, 9, 4
    assert value_loss(new, old, ret, clip_range_vf=0.5).item() == pytest.approx((2.25 + 9 + 4) / 3)


def test_value_loss_clipped_gradient_vanishes_when_clipped_branch_wins():
    new = torch.tensor([1.0], requires_grad=True)
    value_loss(new, torch.tensor([0.0]), torch.tensor([2.0]), clip_range_vf=0.5).backward()
    assert new.grad.item() == 0.0  # the clipped error (2.25) > unclipped (1): no gradient through V


def test_entropy_bonus_is_mean():
    assert entropy_bonus(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(2.0)
