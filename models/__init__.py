"""Models: the event-log contract, encoding, the event-sequence model, sampling and evaluation."""

from models.errors import DataContractError, TwinsimError
from models.event_log import EventLog, load_event_log
from models.twin import TwinModel

__all__ = ["DataContractError", "EventLog", "TwinModel", "TwinsimError", "load_event_log"]
