"""twinsim validate: fidelity, utility and privacy of a synthetic event log against real holdout users.

>>> report = run_validation("real/train", "real/holdout", "synthetic")   # doctest: +SKIP
>>> report["passed"], report["groups"]                                  # doctest: +SKIP
(True, {'fidelity': True, 'sequence': True, 'calendar': True, 'utility': True, 'privacy': True})

See docs/validation.md for every figure, its threshold and why.
"""

from twinsim.models.validation.run import ValidationConfig, run_model_validation, run_validation

__all__ = ["ValidationConfig", "run_model_validation", "run_validation"]
