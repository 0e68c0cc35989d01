"""Simulation: the reference world generator today; the SimPy engine for live synthetic users next."""
