"""The reference bank world: an agent-based generator of realistic customer event logs.

It stands in for a bank's private data, so that the whole pipeline runs without any real customer.
Its behavioural laws are documented in docs/reference-world.md and parameterised in ``laws.py``.

>>> from simulator.reference_world import WorldConfig, generate_reference_world
>>> manifest = generate_reference_world(WorldConfig(users=200, days=60, seed=1), "/tmp/world")  # doctest: +SKIP
>>> what_if = generate_reference_world(WorldConfig(users=200, days=60, seed=1), "/tmp/world-push",
...                                    scenario="travel_card_at_login")  # doctest: +SKIP
"""

from twinsim.simulator.reference_world.laws import world_vocabulary
from twinsim.simulator.reference_world.world import WorldConfig, generate_reference_world

__all__ = ["WorldConfig", "generate_reference_world", "world_vocabulary"]
