"""Models: the event-log contract, encoding, the event-sequence model, sampling and evaluation."""

from twinsim.models.errors import DataContractError, TwinsimError
from twinsim.models.event_log import EventLog, load_event_log

__all__ = ["DataContractError", "EventLog", "TwinModel", "TwinsimError", "load_event_log"]


def __getattr__(name: str):
    # TwinModel pulls in torch; import it only when asked for, so `inspect` starts fast.
    if name == "TwinModel":
        from twinsim.models.twin import TwinModel

        return TwinModel
    raise AttributeError(f"module 'twinsim.models' has no attribute {name!r}")
