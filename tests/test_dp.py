"""User-level DP-SGD: clipping bounds each customer's influence, the noise has the planned scale, the
accountant's epsilon is recorded, and a DP run is reproducible."""

from __future__ import annotations

import json

import pytest
import torch

from twinsim.models.dp import PrivacyPlan, private_gradient
from twinsim.models.errors import TwinsimError
from twinsim.models.training import TrainConfig, train
from twinsim.models.validation.run import differential_privacy

pytest.importorskip("opacus")
from conftest import TINY


def _plan(noise: float, clip: float = 1.0, rate: float = 0.5) -> PrivacyPlan:
    return PrivacyPlan(target_epsilon=1.0, delta=1e-5, max_grad_norm=clip, sample_rate=rate, steps_per_epoch=2,
                       steps=2, noise_multiplier=noise)


def test_each_users_gradient_is_clipped_before_the_sum():
    w = torch.zeros(3, requires_grad=True)
    # user gradients (10, 0, 0) and (0, 0.5, 0): the first is clipped to norm 1, the second is kept
    losses = [w @ torch.tensor([10.0, 0, 0]), w @ torch.tensor([0, 0.5, 0])]
    private_gradient([w], iter(losses), _plan(noise=0.0), users=4, generator=torch.Generator().manual_seed(0))
    expected_users = 0.5 * 4
    assert torch.allclose(w.grad, torch.tensor([1.0, 0.5, 0.0]) / expected_users)


def test_noise_has_the_planned_standard_deviation():
    w = torch.zeros(20_000, requires_grad=True)
    plan = _plan(noise=1.5, clip=2.0, rate=0.25)
    private_gradient([w], iter([w.sum() * 0]), plan, users=8, generator=torch.Generator().manual_seed(1))
    assert float(w.grad.std()) == pytest.approx(1.5 * 2.0 / (0.25 * 8), rel=0.03)


def test_plan_reaches_the_target_epsilon_and_refuses_a_large_delta():
    plan = PrivacyPlan.make(epsilon=4.0, delta=1e-5, max_grad_norm=1.0, users=2_000, users_per_step=50, epochs=3)
    assert plan.steps == 3 * 40 and plan.noise_multiplier > 0.5
    assert 3.9 <= plan.spent(plan.steps) <= 4.0
    assert plan.spent(plan.steps // 3) < plan.spent(plan.steps)
    with pytest.raises(TwinsimError, match="--dp-delta"):
        PrivacyPlan.make(epsilon=4.0, delta=0.01, max_grad_norm=1.0, users=200, users_per_step=50, epochs=1)


def test_dp_training_records_epsilon_and_is_reproducible(small_log, tmp_path):
    config = TrainConfig(epochs=2, seed=4, max_train_users=80, dp_epsilon=3.0, dp_users_per_step=16)
    for name in ("a", "b"):
        train(small_log, tmp_path / name, model_overrides=TINY, config=config)
    manifest = json.loads((tmp_path / "a" / "model.json").read_text())
    privacy = manifest["privacy"]
    assert privacy["unit"] == "user" and privacy["training_users"] == 80
    assert 2.8 <= privacy["epsilon"] <= 3.0 and privacy["steps"] == 2 * 5
    assert "attributes" in " ".join(privacy["not_covered"])
    assert differential_privacy(manifest)["epsilon"] == privacy["epsilon"]
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
