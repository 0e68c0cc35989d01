"""Scenarios: TOML files of campaigns acting on a simulated population (``scenario.py``, ``builtin/``)."""
