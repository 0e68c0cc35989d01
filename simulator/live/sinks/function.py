"""A Python callable as a sink (tests, embedding): ``CallableSink(fn)`` or the spec ``function:MODULE:NAME``.

``fn(payloads)`` gets each batch's list of payloads; returning counts as acknowledged, raising as a failed
attempt (retried, then dead-lettered; raise :class:`~twinsim.simulator.live.sinks.base.Permanent` to skip
the retries).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from twinsim.simulator.live.sinks.base import RETRY_OPTIONS, Sink, batch_option
from twinsim.simulator.live.sinks.records import SinkError


def resolve(reference: str) -> Callable:
    """``"package.module:name"`` -> that callable."""
    module, _, attribute = reference.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attribute) if module and attribute else None
    except (ImportError, AttributeError) as exc:
        raise SinkError(f"--sink function:{reference}: cannot import it ({exc}); name a callable as "
                        "function:MODULE:NAME, e.g. function:mypackage.hooks:receive") from None
    if not callable(fn):
        raise SinkError(f"--sink function:{reference}: not a callable; name one as function:MODULE:NAME, e.g. "
                        "function:mypackage.hooks:receive")
    return fn


class CallableSink(Sink):
    """Calls ``fn(payloads)`` for each batch, on the sink's delivery thread."""

    kind = "function"
    OPTIONS = (batch_option(100), *RETRY_OPTIONS)
    EXAMPLE = "function:mypackage.hooks:receive"

    def __init__(self, fn: Callable[[list[dict]], object] | str, name: str | None = None, template=None,
                 **options) -> None:
        self.fn = resolve(fn) if isinstance(fn, str) else fn
        if not callable(self.fn):
            raise SinkError(f"CallableSink({fn!r}): not a callable; give a function of the batch's payloads")
        target = f"function:{fn}" if isinstance(fn, str) else f"function:{getattr(fn, '__qualname__', fn)}"
        super().__init__(target, name, template, **options)

    def deliver(self, records: list[dict], payloads: list[dict]) -> None:
        self.fn(payloads)
