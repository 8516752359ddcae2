"""proximo's GRPO losses against TRL's own loss code on the same float64 tensors: GRPOTrainer._compute_loss
(grpo, bnpo, dr_grpo, dapo, GSPO, clip-higher, the k3 KL with and without use_bias_correction_kl, cispo,
sapo, the vLLM importance-sampling weights) and trl.experimental's GMPOTrainer._compute_loss, run on a
stand-in trainer object that carries only the attributes the method reads. Loss values and gradients with
respect to the policy log-probs must agree to float64 rounding.

Conventions that differ on purpose (not tested as equal): TRL's sapo temperatures pass through
torch.where with Python floats and become float32 (1.05 turns into 1.0499999523), proximo keeps them in the
loss's dtype, so the sapo case uses temperatures float32 holds exactly; with kl_coef > 0 and an off-policy
correction TRL weights the policy term only, proximo the whole per-token loss (the KL term is an expectation
under the learner's pi_old too), so those cases run with kl_coef 0; a row without a real token counts in
TRL's grpo/GMPO means and not in proximo's, so every row here has one."""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="TRL is not installed (it is the bench-llm "
                               "extra: pip install 'proximo[bench-llm]'); this test runs TRL's own loss code")
trl_gmpo = pytest.importorskip("trl.experimental.gmpo.gmpo_trainer", reason="this TRL has no experimental GMPO")

from proximo.core.offpolicy import importance_weights  # noqa: E402
from proximo.llm.losses import grpo_token_loss  # noqa: E402

D = torch.float64
MAX_LEN = 5


class _Accelerator:
    """One process: gather and reduce hand values back."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    b = 6
    old = -torch.rand(b, MAX_LEN, generator=g, dtype=D) * 3
    logp = old + torch.randn(b, MAX_LEN, generator=g, dtype=D) * 0.3  # some ratios far outside 1 +- 0.2
    ref = old + torch.randn(b, MAX_LEN, generator=g, dtype=D) * 0.2
    sampler = old + torch.randn(b, MAX_LEN, generator=g, dtype=D) * 0.4
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    mask = (torch.arange(MAX_LEN)[None, :] < lengths[:, None]).long()
    adv = torch.tensor([1.2, -0.7, 0.0, 0.4, -1.5, 0.9], dtype=D)
    return logp, old, ref, sampler, mask, adv


def _trl(trainer_cls, logp, old, ref, mask, adv, loss_type="bnpo", level="token", beta=0.0, eps=0.2,
         eps_high=None, bias_correction=False, is_ratio=None, tau_pos=1.0, tau_neg=1.05):
    """(loss, d loss / d logp) of TRL's _compute_loss on a stand-in trainer."""
    leaf = logp.clone().requires_grad_(True)
    args = SimpleNamespace(use_bias_correction_kl=bias_correction, delta=None, sapo_temperature_pos=tau_pos,
                           sapo_temperature_neg=tau_neg, steps_per_generation=1)
    fake = SimpleNamespace(
        args=args, model=SimpleNamespace(training=True), accelerator=_Accelerator(), beta=beta,
        loss_type=loss_type, importance_sampling_level=level, epsilon_low=eps,
        epsilon_high=eps if eps_high is None else eps_high, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=is_ratio is not None, current_gradient_accumulation_steps=1,
        max_completion_length=MAX_LEN, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda *a, **k: (leaf, torch.zeros_like(leaf), None))
    inputs = {"prompt_ids": torch.zeros(len(adv), 1, dtype=torch.long), "prompt_mask": torch.ones(len(adv), 1),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum().to(D)}
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    loss = trainer_cls._compute_loss(fake, None, inputs)
    loss.backward()
    return loss.detach(), leaf.grad


def _ours(logp, old, ref, mask, adv, aggregation="bnpo", beta=0.0, **options):
    leaf = logp.clone().requires_grad_(True)
    clip = options.pop("clip", (0.2, None))
    loss, _, _ = grpo_token_loss(leaf, old, ref, adv, mask, clip[0], clip[1], beta, aggregation, MAX_LEN,
                                 batch_tokens=float(mask.sum()), **options)
    loss.backward()
    return loss.detach(), leaf.grad


def _same(theirs, ours):
    # float64 rounding: the two compute the same sums in different orders (the largest difference seen here,
    # 4.6e-17, is below one ulp of 1)
    assert torch.allclose(ours[0], theirs[0], rtol=0, atol=1e-16), (ours[0].item(), theirs[0].item())
    assert torch.allclose(ours[1], theirs[1], rtol=0, atol=1e-16), (ours[1] - theirs[1]).abs().max().item()
    assert theirs[1].abs().max() > 0


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps_high", [None, 0.28])  # None: the symmetric clip; 0.28: DAPO's clip-higher
def test_clip_losses_and_k3_match_trl(loss_type, beta, eps_high):
    logp, old, ref, _, mask, adv = _tensors()
    theirs = _trl(trl_grpo.GRPOTrainer, logp, old, ref, mask, adv, loss_type, beta=beta, eps_high=eps_high)
    ours = _ours(logp, old, ref, mask, adv, loss_type, beta, clip=(0.2, eps_high))
    _same(theirs, ours)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_k3_with_the_ratio_correction_matches_trl_use_bias_correction_kl(level):
    logp, old, ref, _, mask, adv = _tensors(1)
    eps = (0.2, None) if level == "token" else (3e-4, 4e-4)
    theirs = _trl(trl_grpo.GRPOTrainer, logp, old, ref, mask, adv, "grpo", level, beta=0.04, eps=eps[0],
                  eps_high=eps[1], bias_correction=True)
    ours = _ours(logp, old, ref, mask, adv, "grpo", 0.04, clip=eps, importance_sampling=level,
                 kl_ratio_weighted=True)
    _same(theirs, ours)
    plain = _ours(logp, old, ref, mask, adv, "grpo", 0.04, clip=eps, importance_sampling=level)
    assert not torch.allclose(plain[1], ours[1], atol=1e-6)  # the correction changes the gradient


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gspo_matches_trl_sequence_level(beta):
    logp, old, ref, _, mask, adv = _tensors(2)
    logp = old + (logp - old) * 1e-3  # sequence ratios near the narrow GSPO band, some in and some out
    theirs = _trl(trl_grpo.GRPOTrainer, logp, old, ref, mask, adv, "grpo", "sequence", beta, 3e-4, 4e-4)
    ours = _ours(logp, old, ref, mask, adv, "grpo", beta, clip=(3e-4, 4e-4), importance_sampling="sequence")
    _same(theirs, ours)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_cispo_matches_trl(beta):
    logp, old, ref, _, mask, adv = _tensors(3)
    cap = 1.1  # TRL's epsilon_high is the weight's cap itself for cispo
    assert (torch.exp(logp - old)[mask.bool()] > cap).any()
    theirs = _trl(trl_grpo.GRPOTrainer, logp, old, ref, mask, adv, "cispo", beta=beta, eps_high=cap)
    ours = _ours(logp, old, ref, mask, adv, "dapo", beta, surrogate="cispo", cispo_max_weight=cap)
    _same(theirs, ours)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_sapo_matches_trl(beta):
    logp, old, ref, _, mask, adv = _tensors(4)
    theirs = _trl(trl_grpo.GRPOTrainer, logp, old, ref, mask, adv, "sapo", beta=beta, tau_pos=1.0, tau_neg=1.25)
    ours = _ours(logp, old, ref, mask, adv, "grpo", beta, surrogate="sapo", sapo_tau_pos=1.0, sapo_tau_neg=1.25)
    _same(theirs, ours)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gmpo_matches_trl_experimental(beta):
    logp, old, ref, _, mask, adv = _tensors(5)
    logp = old + (logp - old) * 2  # log-ratios past +-0.4 on both sides
    theirs = _trl(trl_gmpo.GMPOTrainer, logp, old, ref, mask, adv, beta=beta, eps=0.4)
    ours = _ours(logp, old, ref, mask, adv, "grpo", beta, clip=(0.4, 0.4), surrogate="gmpo")
    _same(theirs, ours)


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_offpolicy_weights_in_the_loss_match_trl_vllm_correction(mode, loss_type):
    """The weights themselves are checked on hand values (test_llm_frontier_losses.py: TRL computes them
    inline in _generate_and_score_completions, not in a function one can call); here TRL's loss applies
    them as it applies its own importance_sampling_ratio."""
    logp, old, ref, sampler, mask, adv = _tensors(6)
    cap = 1.5  # below the default 3, so that these few samples have weights past it
    w = importance_weights(old, sampler, mask, mode, cap)
    assert (w[mask.bool()] == (cap if mode.endswith("truncate") else 0.0)).any()
    ratio = w[:, :1] if mode.startswith("sequence") else w
    theirs = _trl(trl_grpo.GRPOTrainer, logp, old, ref, mask, adv, loss_type, is_ratio=ratio)
    ours = _ours(logp, old, ref, mask, adv, loss_type, sample_weights=w)
    _same(theirs, ours)

