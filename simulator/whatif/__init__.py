"""What-if analysis: a scenario's effect on customers, from a baseline run and a scenario run of the same
population with common random numbers (``twinsim whatif``, docs/whatif.md).

>>> from twinsim.simulator.whatif import uplift_between
>>> report = uplift_between("runs/whatif/baseline", "runs/whatif/scenario")    # doctest: +SKIP
>>> report["summary"]                                                          # doctest: +SKIP
"""

from twinsim.simulator.whatif.compare import uplift_between
from twinsim.simulator.whatif.report import write_uplift
from twinsim.simulator.whatif.run import WhatifConfig, whatif

__all__ = ["WhatifConfig", "uplift_between", "whatif", "write_uplift"]
