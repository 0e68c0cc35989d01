"""Simulation: the reference world generator (``reference_world/``) and the SimPy engine behind
``twinsim simulate`` (``engine.py``, ``cohort.py``, ``population.py``, ``sink.py``)."""
