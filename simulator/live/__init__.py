"""``twinsim live``: synthetic customers' events emitted in (accelerated) real time into systems under test.

:mod:`twinsim.simulator.live.sinks` holds the targets the live engine emits into (JSONL, webhook, PostgreSQL,
Redis Streams, NATS JetStream, a Python callable); they work without the engine. See ``docs/live.md``.
"""
