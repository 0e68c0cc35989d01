"""twinsim validate: fidelity, utility and privacy of a synthetic event log against real holdout users."""
