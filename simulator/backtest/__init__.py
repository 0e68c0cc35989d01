"""Backtests: score the twin's continuation of real customers past a cut against what happened, next to baselines."""
