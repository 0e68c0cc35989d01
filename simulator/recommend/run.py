"""``twinsim recommend``: every policy under test on the same customers with common random numbers (same seed,
customers, start, days and decision points), then the side-by-side report (``report.py``).

Layout of a recommend directory::

    policies/1-random/  policies/2-epsilon-greedy[epsilon=0.1]/ ...   one ``twinsim simulate`` run per policy,
                                                                        with its ``decisions/``
    report.json  report.html

Every policy run is a cohort run of the engine with the policy in the loop (``simulator/decisions.py``). A
learning policy learns from the customers of its cohort; recommend puts up to ``MAX_COHORT`` customers in
one cohort whatever ``--workers`` is, so that a policy's result does not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from twinsim.models.errors import OutputExistsError, TwinsimError
from twinsim.scenarios.policies import load_policy, policy_name
from twinsim.simulator.decisions import DecisionSpec
from twinsim.simulator.engine import MAX_COHORT, Progress, SimulateConfig, simulate
from twinsim.simulator.sink import empty_dir


@dataclass
class RecommendConfig:
    """The customers, days and decision points every policy shares."""

    days: int = 30
    users: int | None = None  # new customers (with ``start``), or
    start: str | None = None
    history: str | None = None  # an event log whose customers are continued
    observed_until: str | None = None
    history_days: int = 30
    seed: int = 0
    cohort_size: int | None = None
    share: float = 1.0  # of the trigger events that are decision points
    trigger: str = "login"
    values: dict[str, float] = field(default_factory=dict)  # revenue per purchase, per product (default 1)
    concurrency: int = 16  # HTTP policies: requests in flight
    timeout_s: float = 1.0
    fallback: str | None = None  # HTTP policies: the product shown when the service fails (None: nothing)
    feedback_url: str | None = None  # HTTP policies: where the outcomes of shown offers are POSTed

    def validate(self) -> None:
        if self.users is not None and self.history is not None:
            raise TwinsimError("give either --users N --start DATE (new customers) or --history LOG (continue a log's "
                               "customers), not both")
        if self.users is None and self.history is None:
            raise TwinsimError("give the customers: --users N --start DATE (new customers) or --history LOG (continue "
                               "a log's customers); e.g. --users 10000 --start 2025-06-01")
        if self.concurrency < 1:
            raise TwinsimError(f"--concurrency must be at least 1 (got {self.concurrency}); e.g. --concurrency 16")
        if not self.timeout_s > 0:
            raise TwinsimError(f"--timeout must be positive seconds (got {self.timeout_s}); e.g. --timeout 0.5")
        self.simulation().validate()

    def simulation(self) -> SimulateConfig:
        return SimulateConfig(users=self.users, start=self.start, days=self.days, seed=self.seed,
                              history_days=self.history_days, history=self.history,
                              observed_until=self.observed_until, cohort_size=self.cohort_size or MAX_COHORT)

    def decisions(self, policy: str) -> DecisionSpec:
        http = ({"concurrency": self.concurrency, "timeout_s": self.timeout_s, "fallback": self.fallback,
                 "feedback_url": self.feedback_url} if is_http(policy) else {})
        return DecisionSpec(policy=policy, trigger=self.trigger, share=self.share, values=dict(self.values), http=http)


def is_http(policy: str) -> bool:
    return str(policy).startswith(("http://", "https://"))


def run_dirs(out: Path, policies: Sequence[str]) -> dict[str, Path]:
    """Each policy's name and run directory, in the order given (names must differ)."""
    names = [policy_name(p) for p in policies]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TwinsimError(f"--policy: {twice} given twice; each policy runs once (give options to tell two apart, "
                           "e.g. --policy epsilon-greedy:epsilon=0.05 --policy epsilon-greedy:epsilon=0.2)")
    return {name: out / "policies" / f"{k}-{name}" for k, name in enumerate(names, start=1)}


def check_policies(policies: Sequence[str], config: RecommendConfig) -> None:
    """Every policy loads (a Python class imports, an HTTP service answers) before anything is simulated."""
    if not policies:
        raise TwinsimError("give at least one --policy: a built-in (random, logged, popular, segment-greedy, "
                           "epsilon-greedy, thompson, fixed:product=NAME), module:Class, file.py:Class or an "
                           "http:// URL")
    for spec in policies:
        policy = load_policy(spec, **config.decisions(spec).http)
        if callable(getattr(policy, "check", None)):
            policy.check()
        if callable(getattr(policy, "close", None)):
            policy.close()


def recommend(model_dir: str | Path, policies: Sequence[str], config: RecommendConfig, out: str | Path,
              workers: int | None = None, resume: bool = False, overwrite: bool = False,
              on_progress: Callable[[str, Progress], None] | None = None) -> dict:
    """Run every policy of ``policies`` (specs) on ``config``'s customers with the model in ``model_dir`` into
    ``out``, write report.json and report.html there and return the report. ``resume`` finishes the runs an
    interrupted recommend left (same options); ``on_progress(label, progress)`` sees every run's progress."""
    config.validate()
    dirs = run_dirs(Path(out), policies)
    check_policies(policies, config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"-o {out} is a file, not a directory; choose another path")
    if not resume:
        empty_dir(out, overwrite, "is not empty; pass --overwrite to replace it, or --resume to finish an "
                                  "interrupted recommend")
    for spec, (name, run_dir) in zip(policies, dirs.items(), strict=True):
        report = None if on_progress is None else (lambda p, name=name: on_progress(name, p))
        simulate(model_dir, config.simulation(), run_dir, resume=resume and (run_dir / "manifest.json").exists(),
                 on_progress=report, workers=workers, decisions=config.decisions(spec))
    from twinsim.models.model_dir import read_manifest
    from twinsim.simulator.recommend.report import write_report
    from twinsim.simulator.whatif.runs import read_run

    products = read_manifest(model_dir)["schema"]["marks"]["product"][1:]
    runs = {name: read_run(d) for name, d in dirs.items()}
    about = {"environment": f"twin model {model_dir}", "customers": len(next(iter(runs.values())).users),
             **asdict(config), "policies": list(policies), "common_random_numbers": True}
    return write_report(runs, out, values={p: float(config.values.get(p, 1.0)) for p in products},
                        title="twinsim recommend", about=about)
