"""KL estimators and the KL-coefficient controllers."""
import pytest
import torch

from proximo.core.kl import AdaptiveKLController, FixedKLController, kl_estimate


def test_estimators_are_zero_for_identical_policies():
    logp = torch.log(torch.tensor([0.2, 0.5, 0.3]))
    for kind in ("k1", "k2", "k3"):
        assert torch.all(kl_estimate(logp, logp, kind) == 0)


def test_estimators_match_analytic_gaussian_kl():
    # KL(N(0,1) || N(0.5,1)) = 0.125; samples drawn from the sampler N(0,1).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=g, dtype=torch.float64)
    logp_q = -0.5 * x**2
    logp_p = -0.5 * (x - 0.5) ** 2
    assert kl_estimate(logp_q, logp_p, "k1").mean().item() == pytest.approx(0.125, abs=5e-3)
    assert kl_estimate(logp_q, logp_p, "k3").mean().item() == pytest.approx(0.125, abs=5e-3)
    assert kl_estimate(logp_q, logp_p, "k2").mean().item() == pytest.approx(0.125, abs=2e-2)  # biased, close here
    assert (kl_estimate(logp_q, logp_p, "k3") >= 0).all()


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_adaptive_controller_follows_the_paper_rule():
    # Paper: d < d_targ / 1.5 -> beta / 2 ; d > d_targ * 1.5 -> beta * 2 ; otherwise unchanged.
    ctl = AdaptiveKLController(value=1.0, target=0.01)
    assert ctl.update(0.005) == 0.5
    assert ctl.update(0.01) == 0.5
    assert ctl.update(0.0149) == 0.5
    assert ctl.update(0.016) == 1.0
    assert ctl.update(0.1) == 2.0
    assert ctl.update(0.0067) == 2.0  # 0.01 / 1.5 = 0.00667: just inside the band
    assert ctl.update(0.0066) == 1.0


def test_fixed_controller_never_moves():
    ctl = FixedKLController(3.0)
    for kl in (0.0, 1.0, 100.0):
        assert ctl.update(kl) == 3.0
