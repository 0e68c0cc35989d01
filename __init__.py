"""twinsim: learn how customers behave over time from an event log, then simulate customers who behave the
same way but are no real person.

>>> import twinsim
>>> twin = twinsim.TwinModel.fit("runs/world", "runs/model")                   # doctest: +SKIP
>>> users, events = twin.sample(1000, start="2025-01-01", days=90, seed=1)     # doctest: +SKIP
>>> report = twinsim.uplift_between("runs/w/baseline", "runs/w/scenario")       # doctest: +SKIP

The command line is ``twinsim`` (:mod:`twinsim.cli`); the packages are :mod:`twinsim.models` (the event-log
contract, the model, sampling, validation), :mod:`twinsim.simulator` (the engine and the reference world)
and :mod:`twinsim.scenarios`.
"""

from twinsim.models import DataContractError, EventLog, TwinsimError, load_event_log

__all__ = ["DataContractError", "EventLog", "TwinModel", "TwinsimError", "load_event_log", "uplift_between"]


def __getattr__(name: str):
    # TwinModel pulls in torch; import it only when asked for, so `twinsim inspect` starts fast.
    if name == "TwinModel":
        from twinsim.models.twin import TwinModel

        return TwinModel
    if name == "uplift_between":  # a what-if's report from two run directories (docs/whatif.md)
        from twinsim.simulator.whatif.compare import uplift_between

        return uplift_between
    raise AttributeError(f"module 'twinsim' has no attribute {name!r}")
