"""The live clock: SimPy's real-time environment in epoch seconds, where one wall-clock second is ``speed``
simulated seconds, that can change speed, pause and jump without a stale wall reference."""

from __future__ import annotations

from time import monotonic

import simpy.rt


class LiveClock(simpy.rt.RealtimeEnvironment):
    """``now`` is epoch seconds (UTC). Non-strict: a step that computed too long is late, not an error (the
    engine measures lateness instead of hiding it). ``fast`` runs without sleeping (a jump ahead)."""

    def __init__(self, now_s: float, speed: float) -> None:
        super().__init__(initial_time=now_s, factor=1.0 / speed, strict=False)
        self.speed = float(speed)
        self.fast = False

    def rebase(self, speed: float | None = None) -> None:
        """From now on, simulated time ``now`` is the present wall time (after a pause, a jump or a new speed)."""
        if speed is not None:
            self.speed = float(speed)
        self.env_start, self.real_start = self.now, monotonic()
        self._factor = 0.0 if self.fast else 1.0 / self.speed

    def set_fast(self, fast: bool) -> None:
        self.fast = fast
        self.rebase()

    def wall_of(self, t_s: float) -> float:
        """The monotonic wall time at which simulated time ``t_s`` is due."""
        return self.real_start + (t_s - self.env_start) * self._factor
