"""Masked reductions and schedules."""
import math

import pytest
import torch

from proximo.core.masked import masked_mean, masked_var, masked_whiten
from proximo.core.schedules import Schedule


def test_masked_mean_ignores_padding_values():
    x = torch.tensor([[1.0, 2.0, 1000.0], [3.0, -500.0, -500.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 3.0])


def test_masked_var_and_whiten_equal_the_unpadded_ones():
    real = torch.tensor([1.0, 4.0, 2.0, 8.0])
    padded = torch.tensor([[1.0, 4.0, 99.0], [2.0, 8.0, -99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masked_var(padded, mask).item() == pytest.approx(real.var().item())
    white = masked_whiten(padded, mask)
    assert white[mask.bool()].tolist() == pytest.approx(((real - real.mean()) / real.std()).tolist(), rel=1e-5)
    assert white[~mask.bool()].tolist() == [0.0, 0.0]


def test_schedules():
    assert Schedule("constant", 3e-4)(0.7) == 3e-4
    linear = Schedule("linear", 1e-3)
    assert linear(0.0) == 1e-3 and linear(0.5) == pytest.approx(5e-4) and linear(1.0) == 0.0
    cosine = Schedule("cosine", 1.0, 0.0)
    assert cosine(0.5) == pytest.approx(0.5) and cosine(1.0) == pytest.approx(0.0, abs=1e-12)
    assert linear(2.0) == 0.0  # progress is clamped
    with pytest.raises(ValueError, match="exponential"):
        Schedule("exponential", 1.0)
    assert math.isclose(Schedule("linear", 0.2, 0.1)(0.5), 0.15)
