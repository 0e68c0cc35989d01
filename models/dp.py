"""User-level differentially private training (DP-SGD).

The privacy unit is the customer, not the event or the window: every step draws customers with
probability ``sample_rate`` (Poisson sampling), takes each drawn customer's gradient over their *whole*
history, clips it to ``max_grad_norm``, sums, and adds Gaussian noise of standard deviation
``noise_multiplier x max_grad_norm``. Adding or removing one customer therefore changes at most one
clipped term of one sum per step, which is what the subsampled Gaussian mechanism's accounting assumes.
Opacus's RDP accountant turns (noise multiplier, sample rate, steps) into the epsilon spent at delta.

What the guarantee covers is the network weights. The model directory also holds counts and
vocabularies computed from the training users without noise (the static-attribute table, event and mark
vocabularies, amount normalisation); ``model.json`` says so next to epsilon. The noise is drawn from a
seeded generator so that runs are reproducible; that is not a cryptographically secure source.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from twinsim.models.errors import TwinsimError

NOT_COVERED = ["static-attribute table (attributes.parquet), activity profile included",
               "event, mark and attribute vocabularies",
               "amount and attribute normalisation constants"]


def _accounting():
    try:
        from opacus import __version__
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise TwinsimError("--dp-epsilon needs Opacus for the privacy accounting: pip install 'twinsim[dp]' "
                           "(or pip install opacus)") from err
    return RDPAccountant, get_noise_multiplier, __version__


def _orders(accountant_cls) -> list[float]:
    """RDP orders searched for the tightest epsilon: Opacus's defaults (up to 63) and on to 512, which
    small sample rates over many steps need."""
    return list(accountant_cls.DEFAULT_ALPHAS) + list(range(64, 513, 4))


@dataclass(frozen=True)
class PrivacyPlan:
    """The noise that reaches ``target_epsilon`` at ``delta`` after ``steps`` steps at ``sample_rate``."""

    target_epsilon: float
    delta: float
    max_grad_norm: float
    sample_rate: float
    steps_per_epoch: int
    steps: int
    noise_multiplier: float

    @classmethod
    def make(cls, epsilon: float, delta: float, max_grad_norm: float, users: int, users_per_step: int,
             epochs: int) -> PrivacyPlan:
        if users < 2:
            raise TwinsimError(f"--dp-epsilon needs at least 2 training users (got {users})")
        if not delta < 1.0 / users:
            raise TwinsimError(f"--dp-delta {delta:g} is not below 1 / training users (1/{users}); a delta that "
                               f"large allows leaking a whole customer. Use e.g. --dp-delta {0.1 / users:.1e}")
        rate = min(1.0, users_per_step / users)
        steps_per_epoch = math.ceil(1.0 / rate)
        accountant_cls, get_noise_multiplier, _ = _accounting()
        sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=rate,
                                     steps=steps_per_epoch * epochs, accountant="rdp", epsilon_tolerance=0.005,
                                     alphas=_orders(accountant_cls))
        return cls(epsilon, delta, max_grad_norm, rate, steps_per_epoch, steps_per_epoch * epochs, float(sigma))

    def spent(self, steps: int) -> float:
        """Epsilon (at ``delta``) spent after ``steps`` steps."""
        accountant_cls, _, _ = _accounting()
        accountant = accountant_cls()
        accountant.history = [(self.noise_multiplier, self.sample_rate, steps)] if steps else []
        return float(accountant.get_epsilon(self.delta, alphas=_orders(accountant_cls))) if steps else 0.0

    def record(self, steps: int, users: int) -> dict:
        """The ``privacy`` section of model.json."""
        _, _, version = _accounting()
        return {"mechanism": "DP-SGD", "unit": "user", "epsilon": round(self.spent(steps), 4), "delta": self.delta,
                "target_epsilon": self.target_epsilon, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.max_grad_norm, "sample_rate": self.sample_rate, "steps": steps,
                "training_users": users, "accountant": f"RDP (opacus {version})", "covers": "network weights",
                "not_covered": NOT_COVERED}


def steps_of_epoch(plan: PrivacyPlan, users: int, seed: int, epoch: int) -> Iterator[np.ndarray]:
    """The users drawn at each step of one epoch: each independently with probability ``plan.sample_rate``."""
    rng = np.random.default_rng([seed, epoch, 0xD9])
    for _ in range(plan.steps_per_epoch):
        yield np.flatnonzero(rng.random(users) < plan.sample_rate)


def private_gradient(params: list[torch.Tensor], user_losses: Iterator[torch.Tensor], plan: PrivacyPlan,
                     users: int, generator: torch.Generator) -> None:
    """Set ``p.grad`` to the noisy mean of the per-user clipped gradients of ``user_losses``.

    The mean divides by the *expected* number of users per step (sample rate x users), not the number
    drawn, so that the number drawn stays private."""
    total = [torch.zeros_like(p) for p in params]
    for loss in user_losses:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        norm = torch.sqrt(sum(((g * g).sum() for g in grads if g is not None), torch.zeros(())))
        scale = min(1.0, plan.max_grad_norm / (float(norm) + 1e-12))
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc.add_(g, alpha=scale)
    std = plan.noise_multiplier * plan.max_grad_norm
    expected = plan.sample_rate * users
    for p, acc in zip(params, total, strict=True):
        p.grad = (acc + torch.normal(0.0, std, p.shape, generator=generator)) / expected


def run_epoch(model: torch.nn.Module, optimiser: torch.optim.Optimizer, schedule, plan: PrivacyPlan,
              users: int, user_loss: Callable[[int], torch.Tensor], seed: int, epoch: int,
              on_step: Callable[[int], None]) -> None:
    """One epoch of DP-SGD; ``user_loss(u)`` is user ``u``'s mean loss per event over their whole history."""
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(int(np.random.default_rng([seed, epoch, 0x5E]).integers(2**62)))
    for drawn in steps_of_epoch(plan, users, seed, epoch):
        optimiser.zero_grad(set_to_none=True)
        private_gradient(params, (user_loss(int(u)) for u in drawn), plan, users, generator)
        optimiser.step()
        schedule.step()
        on_step(len(drawn))
