"""The 2025-26 GRPO losses and corrections against their definitions: CISPO, GMPO and SAPO on hand-computed
values and closed-form gradients; each KL estimator and placement against the exact KL gradient of a small
categorical policy (by enumeration); the off-policy weights on hand values, with dropped tokens carrying
nothing and an exact sampler changing nothing."""
import math

import pytest
import torch

from proximo.core import kl_estimate
from proximo.core.offpolicy import importance_weights, offpolicy_statistics, stale_rows
from proximo.errors import ProximoError
from proximo.llm.losses import grpo_token_loss, kl_reward_advantages

D = torch.float64
NEW = [[-0.5, -1.0, -0.2], [-2.0, -0.1, -9.0]]
OLD = [[-0.9, -1.0, -2.5], [-1.5, -0.4, -3.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.5, -0.5]


def _inputs():
    new = torch.tensor(NEW, dtype=D, requires_grad=True)
    return new, torch.tensor(OLD, dtype=D), torch.tensor(MASK), torch.tensor(ADV, dtype=D)


def _real():
    return [(b, t) for b in range(2) for t in range(3) if MASK[b][t]]


def _loss(surrogate, aggregation="bnpo", **kw):
    new, old, mask, adv = _inputs()
    loss, out, _ = grpo_token_loss(new, old, None, adv, mask, kw.pop("clip_range", 0.2), kw.pop("clip_high", None),
                                   0.0, aggregation, surrogate=surrogate, **kw)
    loss.backward()
    return loss.item(), new.grad, out


def test_cispo_loss_and_gradient_by_hand():
    cap = 1.5  # the first row's third token has r = e^2.3 > cap: capped, yet it keeps its gradient
    loss, grad, out = _loss("cispo", cispo_max_weight=cap)
    n = len(_real())
    hand, hand_grad = 0.0, torch.zeros(2, 3, dtype=D)
    for b, t in _real():
        w = min(math.exp(NEW[b][t] - OLD[b][t]), cap)
        hand += -w * ADV[b] * NEW[b][t] / n
        hand_grad[b, t] = -w * ADV[b] / n  # sg(w): d/dlogp of -w A logp is -w A
    assert loss == pytest.approx(hand, rel=1e-14)
    assert torch.allclose(grad, hand_grad, rtol=1e-14, atol=0)
    assert grad[0, 2] != 0  # PPO's clip would have zeroed this token's gradient
    assert out.clip_fraction.item() == pytest.approx(1 / n)


def test_sapo_loss_and_gradient_by_hand():
    tau_pos, tau_neg = 1.0, 1.05
    loss, grad, _ = _loss("sapo", aggregation="grpo", sapo_tau_pos=tau_pos, sapo_tau_neg=tau_neg)
    rows = {0: 3, 1: 2}
    hand, hand_grad = 0.0, torch.zeros(2, 3, dtype=D)
    for b, t in _real():
        tau = tau_pos if ADV[b] > 0 else tau_neg
        r = math.exp(NEW[b][t] - OLD[b][t])
        s = 1 / (1 + math.exp(-tau * (r - 1)))
        hand += -(s * 4 / tau) * ADV[b] / rows[b] / 2
        hand_grad[b, t] = -4 * s * (1 - s) * r * ADV[b] / rows[b] / 2  # d f / d log pi = 4 s (1 - s) r
    assert loss == pytest.approx(hand, rel=1e-14)
    assert torch.allclose(grad, hand_grad, rtol=1e-13, atol=0)


def test_sapo_gradient_on_policy_is_the_plain_policy_gradient():
    new, _, mask, adv = _inputs()
    loss, _, _ = grpo_token_loss(new, new.detach(), None, adv, mask, 0.2, None, 0.0, "bnpo", surrogate="sapo")
    loss.backward()
    # r = 1: 4 sigmoid(0)(1 - sigmoid(0)) = 1, whatever tau: the gradient is -A / N at every real token
    expected = -adv[:, None].expand(2, 3) * mask / mask.sum()
    assert torch.allclose(new.grad, expected, rtol=1e-15, atol=0)


def test_gmpo_loss_and_gradient_by_hand():
    eps = 0.4
    loss, grad, out = _loss("gmpo", aggregation="grpo", clip_range=eps, clip_high=eps)
    hand, hand_grad = 0.0, torch.zeros(2, 3, dtype=D)
    for b in range(2):
        tokens = [t for t in range(3) if MASK[b][t]]
        logs, free = [], []
        for t in tokens:
            x = NEW[b][t] - OLD[b][t]
            c = min(max(x, -eps), eps)
            chosen = min(x, c) if ADV[b] > 0 else max(x, c)
            logs.append(chosen)
            free.append(chosen == x)  # the clipped value is a constant: no gradient through it
        geo = math.exp(sum(logs) / len(tokens))
        hand += -geo * ADV[b] / 2
        for t, keeps in zip(tokens, free):
            hand_grad[b, t] = -ADV[b] * geo / len(tokens) / 2 if keeps else 0.0
    assert loss == pytest.approx(hand, rel=1e-14)
    assert torch.allclose(grad, hand_grad, rtol=1e-13, atol=0)
    # row 0 (A > 0): token 2's log-ratio 2.3 > 0.4 is clipped; row 1 (A < 0): token 0's -0.5 < -0.4 is
    assert grad[0, 2] == 0 and grad[1, 0] == 0 and grad[0, 0] != 0
    assert out.clip_fraction.item() == pytest.approx(2 / 5)


def test_frontier_surrogates_refuse_sequence_importance_sampling_and_token_advantages():
    new, old, mask, adv = _inputs()
    with pytest.raises(ProximoError, match="importance_sampling token"):
        grpo_token_loss(new, old, None, adv, mask, 0.2, None, 0.0, "bnpo", importance_sampling="sequence",
                        surrogate="cispo")
    with pytest.raises(ProximoError, match="one advantage per sequence"):
        grpo_token_loss(new, old, None, adv[:, None].expand(2, 3), mask, 0.4, None, 0.0, "grpo", surrogate="gmpo")
    with pytest.raises(ProximoError, match="surrogate must be one of"):
        grpo_token_loss(new, old, None, adv, mask, 0.2, None, 0.0, "bnpo", surrogate="ppo2")


# --- the KL to the reference: each estimator and placement against the exact gradient -------------------

V = 3


def _policy(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, generator=g, dtype=D), torch.randn(V, V, generator=g, dtype=D)


def _sequences(first, second, tokens):
    """Every sequence of the policy: log-probs [V, 1] of one token, or [V*V, 2] of (y1, y2), rows y1-major."""
    lp1, lp2 = torch.log_softmax(first, -1), torch.log_softmax(second, -1)
    if tokens == 1:
        return lp1[:, None]
    y1, y2 = torch.arange(V).repeat_interleave(V), torch.arange(V).repeat(V)
    return torch.stack([lp1[y1], lp2[y1, y2]], 1)


def _gradient(value, params):
    """d value / d params, flat (a parameter the value does not use contributes zeros)."""
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def _expected_gradient(tokens, estimator=None, weighted=False, placement="loss", beta=0.5, seed=0):
    """d/d(theta) of E_{y ~ pi}[the loss's KL part] at pi_old = pi, exactly: every sequence, weighted by its
    (constant) probability through sample_weights, summed by dr_grpo with constant 1/B."""
    params = tuple(p.clone().requires_grad_(True) for p in _policy(seed))
    ref = _sequences(*_policy(seed + 1), tokens)
    logp = _sequences(*params, tokens)
    old = logp.detach()
    mask = torch.ones_like(logp, dtype=torch.long)
    prob = old.sum(1).exp()
    weights = prob[:, None].expand_as(logp)
    zeros = torch.zeros(logp.shape[0], dtype=D)
    if placement == "reward":
        adv = kl_reward_advantages(zeros, old, ref, mask, beta, estimator)
        loss, _, _ = grpo_token_loss(logp, old, ref, adv, mask, 0.2, None, 0.0, "dr_grpo", 1.0 / len(prob),
                                     sample_weights=weights)
    else:
        loss, _, _ = grpo_token_loss(logp, old, ref, zeros, mask, 0.2, None, beta, "dr_grpo", 1.0 / len(prob),
                                     kl_estimator=estimator, kl_ratio_weighted=weighted, sample_weights=weights)
    return _gradient(loss, params)


def _kl_gradient(tokens, reverse=False, prefix_fixed=False, beta=0.5, seed=0):
    """beta x the exact gradient of KL(pi || ref) over sequences of `tokens` tokens (reverse: KL(ref || pi));
    prefix_fixed: of sum_t E_{prefix ~ pi, held fixed}[KL(pi || ref) at position t] instead (what a per-token
    loss term differentiates)."""
    params = tuple(p.clone().requires_grad_(True) for p in _policy(seed))
    ref = _sequences(*_policy(seed + 1), tokens)
    logp = _sequences(*params, tokens)
    p, q = (ref, logp) if reverse else (logp, ref)
    if prefix_fixed:
        summand = torch.exp(p) * (p - q)  # p(y_t | prefix) (log p - log q) at each row's token
        kl = summand[::V ** (tokens - 1), 0].sum()  # position 1: each y1 once
        if tokens == 2:
            kl = kl + (logp[:, 0].detach().exp() * summand[:, 1]).sum()  # position 2, the prefix drawn from pi
    else:
        kl = (torch.exp(p.sum(1)) * (p - q).sum(1)).sum()
    return beta * _gradient(kl, params)


@pytest.mark.parametrize("case, target", [
    (("k1", False, "loss"), "zero"),          # E_pi[grad log pi] = 0: k1 in the loss carries no KL gradient
    (("k2", False, "loss"), "forward"),       # grad (log r)^2 / 2 = log(pi/ref) grad log pi
    (("k3", False, "loss"), "reverse"),       # (1 - ref/pi) grad log pi: the gradient of KL(ref || pi)
    (("k3", True, "loss"), "forward"),        # E_old[r k3] = KL(pi || ref) for every theta
    (("k1", True, "loss"), "forward"),
    (("k1", False, "reward"), "forward"),     # the policy gradient of a -k1 reward
])
def test_kl_options_one_token_match_the_exact_kl_gradient(case, target):
    estimator, weighted, placement = case
    got = _expected_gradient(1, estimator, weighted, placement)
    expected = {"zero": torch.zeros_like(got), "forward": _kl_gradient(1),
                "reverse": _kl_gradient(1, reverse=True)}[target]
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
    if target != "zero":
        assert got.abs().max() > 1e-3  # the comparison has something to compare


def test_k1_in_the_reward_gives_the_sequence_kl_gradient_and_a_loss_term_does_not():
    """Over two-token sequences, the reward-to-go of a -k1 reward differentiates the whole sequence's KL
    (a token changes the KL of the tokens after it); a per-token loss term, even corrected, holds each
    position's prefix fixed."""
    full = _kl_gradient(2)
    in_reward = _expected_gradient(2, "k1", placement="reward")
    assert torch.allclose(in_reward, full, rtol=1e-12, atol=1e-14)
    corrected = _expected_gradient(2, "k3", weighted=True)
    assert torch.allclose(corrected, _kl_gradient(2, prefix_fixed=True), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(corrected, full, rtol=1e-3, atol=1e-6)
    assert torch.allclose(_expected_gradient(2, "k2"), _kl_gradient(2, prefix_fixed=True), rtol=1e-12, atol=1e-14)
    # k3 in the reward is not an unbiased estimate of the KL's gradient
    assert not torch.allclose(_expected_gradient(2, "k3", placement="reward"), full, rtol=1e-3, atol=1e-6)


def test_kl_reward_advantages_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5]], dtype=D)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    k1 = [0.5, -1.0]  # old - ref at the real tokens
    adv = kl_reward_advantages(torch.tensor([2.0], dtype=D), old, ref, mask, 0.1, "k1")
    assert torch.allclose(adv, torch.tensor([[2.0 - 0.1 * (k1[0] + k1[1]), 2.0 - 0.1 * k1[1], 0.0]], dtype=D))
    seq = kl_reward_advantages(torch.tensor([2.0], dtype=D), old, ref, mask, 0.1, "k1", per_token=False)
    assert torch.allclose(seq, torch.tensor([2.0 - 0.1 * (k1[0] + k1[1])], dtype=D))


def test_default_kl_term_is_k3_unweighted():
    new, old, mask, adv = _inputs()
    ref = torch.tensor([[-0.7, -1.2, -0.3], [-1.0, -0.2, -1.0]], dtype=D)
    plain = grpo_token_loss(new, old, ref, adv, mask, 0.2, None, 0.1, "bnpo")[0]
    explicit = grpo_token_loss(new, old, ref, adv, mask, 0.2, None, 0.1, "bnpo", kl_estimator="k3",
                               kl_ratio_weighted=False)[0]
    assert torch.equal(plain, explicit)
    k2 = grpo_token_loss(new, old, ref, adv, mask, 0.2, None, 0.1, "bnpo", kl_estimator="k2")[0]
    base = grpo_token_loss(new, old, ref, adv, mask, 0.2, None, 0.0, "bnpo")[0]
    real = mask.bool()
    hand = 0.1 * kl_estimate(new.detach(), ref, "k2")[real].sum() / real.sum()
    assert (k2 - base).item() == pytest.approx(hand.item(), rel=1e-13)


# --- the off-policy correction ------------------------------------------------------------------------

SAMPLER = [[-0.9, -2.4, -2.5], [-1.0, -0.4, -7.0]]  # log w: [0, 1.4, 0], [-0.5, 0, (padding)]


def test_importance_weights_by_hand_in_all_four_modes():
    old, mask = torch.tensor(OLD, dtype=D), torch.tensor(MASK)
    sampler = torch.tensor(SAMPLER, dtype=D)
    e = math.exp
    cap = 3.0
    token = [[1.0, e(1.4), 1.0], [e(-0.5), 1.0, 1.0]]  # e^1.4 = 4.06 > 3
    seq = [e(1.4), e(-0.5)]
    cases = {
        "token_truncate": [[1.0, cap, 1.0], [e(-0.5), 1.0, 1.0]],
        "token_mask": [[1.0, 0.0, 1.0], [e(-0.5), 1.0, 1.0]],
        "sequence_truncate": [[cap] * 3, [seq[1]] * 3],
        "sequence_mask": [[0.0] * 3, [seq[1]] * 3],
    }
    assert token[0][1] > cap
    for mode, expected in cases.items():
        w = importance_weights(old, sampler, mask, mode, cap)
        assert torch.allclose(w, torch.tensor(expected, dtype=D), rtol=1e-15, atol=0), mode
    assert importance_weights(old, sampler, mask, "none") is None
    stats = offpolicy_statistics(old, sampler, mask, "token_mask", cap)
    log_w = [0.0, 1.4, 0.0, -0.5, 0.0]
    assert stats.abs_log_w_sum == pytest.approx(sum(abs(x) for x in log_w))
    assert stats.kl_sum == pytest.approx(sum(e(x) - 1 - x for x in log_w))  # k3 of KL(sampler || learner)
    assert (stats.clipped, stats.units, stats.tokens) == (1.0, 5.0, 5.0)
    seq_stats = offpolicy_statistics(old, sampler, mask, "sequence_mask", cap)
    assert (seq_stats.clipped, seq_stats.units) == (1.0, 2.0)


def test_masked_tokens_carry_nothing_and_an_exact_sampler_changes_nothing():
    new, old, mask, adv = _inputs()
    ref = torch.tensor([[-0.7, -1.2, -0.3], [-1.0, -0.2, -1.0]], dtype=D)
    w = importance_weights(old, torch.tensor(SAMPLER, dtype=D), mask, "token_mask", 3.0)
    loss, _, _ = grpo_token_loss(new, old, ref, adv, mask, 0.2, None, 0.1, "bnpo", sample_weights=w)
    loss.backward()
    assert new.grad[0, 1] == 0  # the dropped token: no gradient from the surrogate nor from the KL term
    moved = new.detach().clone()
    moved[0, 1] = 5.0  # whatever the dropped token's log-prob, the loss does not see it
    again = grpo_token_loss(moved, old, ref, adv, mask, 0.2, None, 0.1, "bnpo", sample_weights=w)[0]
    assert again.item() == pytest.approx(loss.item(), rel=1e-15)
    for surrogate in ("clip", "cispo", "sapo", "gmpo"):
        for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
            ones = importance_weights(old, old.clone(), mask, mode, 3.0)
            a = grpo_token_loss(new, old, ref, adv, mask, 0.2, None, 0.1, "bnpo", surrogate=surrogate)[0]
            b = grpo_token_loss(new, old, ref, adv, mask, 0.2, None, 0.1, "bnpo", surrogate=surrogate,
                                sample_weights=ones)[0]
            assert torch.equal(a, b), (surrogate, mode)


def test_stale_rows():
    assert stale_rows(None, 5, 1) is None and stale_rows(torch.tensor([1]), 5, None) is None
    assert torch.equal(stale_rows(torch.tensor([5, 4, 3, 2]), 5, 2), torch.tensor([False, False, False, True]))


# --- through a real GRPO step ---------------------------------------------------------------------------

FAST = dict(num_eval_prompts=2, tensorboard=False, steps=1, prompts_per_step=4, group_size=4, max_new_tokens=4,
            eval_every=0, device="cpu")
PROMPTS = ["ab", "ba", "aa", "bb"]


def _length(prompts, completions):
    return [float(len(c)) for c in completions]


@pytest.mark.parametrize("flags", [
    dict(surrogate="cispo", loss_aggregation="dapo"),
    dict(surrogate="gmpo", loss_aggregation="grpo", kl_coef=0.05, kl_placement="reward"),
    dict(surrogate="sapo", loss_aggregation="grpo", kl_coef=0.05, kl_estimator="k1", kl_ratio_weighted=True),
    dict(kl_coef=0.05, kl_placement="reward", kl_estimator="k1"),
    dict(importance_sampling="sequence", loss_aggregation="grpo", kl_coef=0.05, kl_placement="reward"),
])
def test_each_new_option_runs_a_step(tmp_path, flags):
    from proximo.llm import GRPO
    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, **FAST, **flags)
    trainer.train()
    row = trainer.history[0]
    assert math.isfinite(row["policy_loss"]) and math.isfinite(row["clip_fraction"])
    # the built-in sampler's log-probs are the learner's: no mismatch to report
    assert (row["offpolicy/kl"], row["offpolicy/abs_log_w"], row["offpolicy/clipped_frac"]) == (0.0, 0.0, 0.0)


def test_an_outside_sampler_is_corrected_and_its_mismatch_logged(tmp_path):
    from proximo.llm import GRPO
    from proximo.llm.generation import KVCacheSampler

    class Skewed(KVCacheSampler):
        """An engine whose log-probs differ from the learner's by known amounts; every row's version is 3."""

        exact_logprobs = False

        def generate(self, *args, **kwargs):
            rollout = super().generate(*args, **kwargs)
            shift = torch.zeros_like(rollout.logprobs)
            shift[0] = -2.0  # row 0: the sampler gave its tokens e^-2 of the learner's probability: w = e^2 > 3
            rollout.logprobs = (rollout.logprobs + shift) * rollout.response_mask
            rollout.policy_version = torch.full((rollout.response_ids.shape[0],), 3)
            return rollout

    trainer = GRPO("tiny", reward_fn=_length, prompts=PROMPTS, run_dir=tmp_path, sampler=Skewed(),
                   offpolicy_correction="sequence_mask", max_staleness=2, **FAST)
    batch = trainer.collect()
    assert batch.sample_weights is not None and torch.all(batch.sample_weights[0] == 0)  # row 0 dropped
    w = batch.sample_weights[1:][batch.mask[1:].sum(1) > 0, 0]
    assert torch.all((w - 1).abs() < 1e-3)  # the other rows: the recomputed log-probs match to float error
    stats = batch.stats
    tokens = float(batch.mask.sum())
    row0 = float(batch.mask[0].sum())
    assert stats["offpolicy/clipped_frac"] == pytest.approx(1 / int((batch.mask.sum(1) > 0).sum()))
    assert stats["offpolicy/abs_log_w"] == pytest.approx(2.0 * row0 / tokens, rel=1e-3)
    assert stats["offpolicy/kl"] == pytest.approx((math.exp(2.0) - 1 - 2.0) * row0 / tokens, rel=1e-3)
    assert stats["offpolicy/stale_frac"] == 0.0  # the learner is at version 0, the rows at 3: none too old
    trainer.step_count = 6  # now they are 3 versions behind, past max_staleness 2: out of the loss
    stale = trainer.collect()
    assert stale.stats["offpolicy/stale_frac"] == 1.0 and float(stale.mask.sum()) == 0.0


def test_config_rejects_bad_frontier_values():
    from proximo.errors import ConfigError
    from proximo.llm import GRPOConfig
    for bad, message in [(dict(surrogate="ppo2"), "surrogate must be one of"),
                         (dict(surrogate="cispo", importance_sampling="sequence"), "importance_sampling token"),
                         (dict(surrogate="gmpo", advantage_estimator="reinforce++"), "one advantage per sequence"),
                         (dict(kl_placement="reward", advantage_estimator="reinforce++"), "already"),
                         (dict(kl_estimator="k4"), "kl_estimator must be one of"),
                         (dict(offpolicy_correction="clip"), "offpolicy_correction must be one of"),
                         (dict(offpolicy_cap=0.0), "offpolicy_cap must be a positive"),
                         (dict(sapo_tau_neg=-1.0), "sapo_tau_neg must be a positive"),
                         (dict(max_staleness=-1), "max_staleness must not be negative")]:
        with pytest.raises(ConfigError, match=message):
            GRPOConfig(**bad)
