"""The HTTP policy under load: a day of logins of ``--users`` customers, asked in the engine's batches.

    python benchmarks/http_policy_load.py [--users 100000] [--concurrency 4 16 64] [--error-share 0.01] \\
        [--stall-share 0.001] [--timeout 0.25] [--url http://HOST:PORT/recommend]
    python benchmarks/http_policy_load.py --model runs/model --users 100000 --days 1 --concurrency 16 [--workers 2]

With ``--model`` the twin's own engine drives the service (``twinsim recommend`` with the URL as the policy,
every login a decision point, ``--fallback savings``): its customers' learned login rhythm makes the load,
and the figures are the run's ``report.json`` service section, with the busiest hour's decisions.

Each customer logs in a Poisson(``--logins``) number of times over the day, at hours drawn from a daytime
profile; the logins due in each ``--step-minutes`` step form one decision batch (a few hundred to a few
thousand requests at 100,000 customers, as the engine asks), each request with up to ``RECENT_EVENTS``
recent events. Without ``--url`` the example service (``scenarios/policies/example_service.py``) runs in
a subprocess on a free port, with the failure injection asked for. For each concurrency, one
:class:`HttpPolicy` sends the whole day; printed: calls/s sustained (calls over the time spent in
``decide``), latency p50/p90/p99/max, HTTP errors, timeouts, other failures and fallbacks; then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from twinsim.scenarios.policies.example_service import fetch_stats
from twinsim.scenarios.policies.http import HttpPolicy
from twinsim.scenarios.policy import POLICY_UNIFORMS, RECENT_EVENTS, Catalogue, DecisionBatch, PolicyError

CATALOGUE = Catalogue(products=["savings", "credit_card", "personal_loan", "mortgage", "insurance"])
HOURLY = np.array([1, 1, 1, 1, 1, 2, 4, 7, 9, 9, 8, 8, 9, 8, 7, 7, 7, 8, 9, 9, 7, 5, 3, 2], dtype=float)
EVENT_TYPES = np.array(["login", "card_payment", "transfer", "offer_shown", "offer_click", "offer_purchase"])
EVENT_SHARES = np.array([0.35, 0.4, 0.12, 0.08, 0.04, 0.01])
SEGMENTS = np.array(["student", "young_professional", "family", "affluent", "retired"])


def day_of_batches(users: int, logins: float, step_minutes: int, seed: int) -> list[DecisionBatch]:
    """The decision batches of one day of logins, in time order (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(logins, users)
    user = np.repeat(np.arange(users), counts)
    nth = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    hour = rng.choice(24, size=len(user), p=HOURLY / HOURLY.sum())
    seconds = hour * 3600 + rng.uniform(0, 3600, len(user))
    order = np.argsort(seconds, kind="stable")
    user, nth, seconds = user[order], nth[order], seconds[order]
    segment = SEGMENTS[rng.integers(len(SEGMENTS), size=users)]
    income = np.round(rng.lognormal(10.3, 0.5, users), 2)
    start = pd.Timestamp("2025-06-02", tz="UTC")
    step = np.floor(seconds / (step_minutes * 60)).astype(int)
    batches = []
    for s in np.unique(step):
        rows = np.flatnonzero(step == s)
        n = len(rows)
        events = rng.integers(0, RECENT_EVENTS + 1, n)
        request = np.repeat(np.arange(n), events)
        event_type = rng.choice(EVENT_TYPES, size=len(request), p=EVENT_SHARES)
        time_of = start + pd.to_timedelta(seconds[rows], unit="s")
        ago = np.sort(rng.uniform(0, 30 * 86400, len(request)))[::-1]
        recent = pd.DataFrame({
            "request": request,
            "timestamp": time_of[request] - pd.to_timedelta(ago, unit="s"),
            "event_type": event_type,
            "amount": np.where(event_type == "card_payment", np.round(rng.lognormal(3, 1, len(request)), 2), np.nan),
            "product": np.where(np.char.startswith(event_type.astype(str), "offer_"),
                                rng.choice(np.array(CATALOGUE.products, dtype=object), len(request)), None)})
        batches.append(DecisionBatch(
            request_id=np.array([f"{u}:{k}" for u, k in zip(user[rows], nth[rows], strict=True)]),
            user_id=user[rows], time=time_of,
            attributes=pd.DataFrame({"segment": segment[user[rows]], "income": income[user[rows]]}),
            recent=recent, uniforms=rng.random((n, POLICY_UNIFORMS))))
    return batches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(args) -> tuple[subprocess.Popen, str]:
    """The example service in a subprocess on a free port, once it accepts connections; its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "twinsim.scenarios.policies.example_service", "--port", str(port),
               "--error-share", str(args.error_share), "--stall-share", str(args.stall_share),
               "--stall-s", str(args.stall_s), "--delay-ms", str(args.delay_ms)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    probe = HttpPolicy(base + "/recommend")
    for _ in range(200):
        try:
            probe.check()
            return process, base
        except PolicyError:
            if process.poll() is not None:
                raise SystemExit(f"the example service exited with {process.returncode}: {' '.join(command)}") from None
            time.sleep(0.1)
    process.terminate()
    raise SystemExit(f"the example service did not start listening on {base} within 20 s")


def run(url: str, batches: list[DecisionBatch], concurrency: int, timeout_s: float) -> dict:
    with HttpPolicy(url, concurrency=concurrency, timeout_s=timeout_s) as policy:
        policy.bind(CATALOGUE, seed=0)
        for batch in batches:
            policy.decide(batch)
        return policy.stats()


def engine_run(args, url: str) -> dict:
    """``twinsim recommend`` of a fresh population with the URL as its only policy (see the docstring)."""
    import tempfile

    from twinsim.simulator.recommend.run import RecommendConfig, recommend, run_dirs

    config = RecommendConfig(users=args.users, start=args.start, days=args.days, seed=args.seed, share=1.0,
                             concurrency=args.concurrency[0], timeout_s=args.timeout, fallback="savings")
    with tempfile.TemporaryDirectory(prefix="http-load-") as out:
        began = time.perf_counter()
        recommend(args.model, [url], config, Path(out), overwrite=True, workers=args.workers,
                  on_progress=lambda *a, **k: None)
        wall = time.perf_counter() - began
        run_dir = next(iter(run_dirs(Path(out), [url]).values()))
        service = json.loads((run_dir / "manifest.json").read_text())["policy"]["service"]
        decisions = pd.read_parquet(run_dir / "decisions", columns=["timestamp", "latency_ms", "failure"])
    hourly = decisions.groupby(pd.to_datetime(decisions["timestamp"], utc=True).dt.floor("h")).size()
    latency = decisions["latency_ms"].dropna().to_numpy()
    return {"mode": "engine", "users": args.users, "days": args.days, "workers": args.workers,
            "concurrency_per_worker": args.concurrency[0], "decisions": len(decisions), "wall_s": round(wall, 1),
            "busiest_hour_decisions": int(hourly.max()), "median_hour_decisions": int(hourly.median()),
            "calls_per_s": service["calls_per_s"], "fallbacks": service["fallbacks"], "failures": service["failures"],
            **{f"latency_{q}_ms": float(np.percentile(latency, p)) for q, p in (("p50", 50), ("p90", 90),
                                                                                ("p99", 99))},
            "latency_max_ms": float(latency.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--logins", type=float, default=1.5, help="mean logins per customer and day")
    parser.add_argument("--step-minutes", type=int, default=15, help="the engine's step: one batch per step")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--timeout", type=float, default=0.25, help="seconds per request")
    parser.add_argument("--error-share", type=float, default=0.0, help="share answered 503 (example service)")
    parser.add_argument("--stall-share", type=float, default=0.0, help="share stalled past the timeout")
    parser.add_argument("--stall-s", type=float, default=2.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the example service's delay per answer")
    parser.add_argument("--url", help="a running recommender instead of the example service")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, help="drive the service with this twin's engine (see the docstring)")
    parser.add_argument("--start", default="2025-06-02", help="--model: the first simulated day")
    parser.add_argument("--days", type=int, default=1, help="--model: simulated days")
    parser.add_argument("--workers", type=int, default=2, help="--model: worker processes")
    args = parser.parse_args()
    if args.users < 1 or args.logins <= 0 or args.step_minutes < 1 or min(args.concurrency) < 1:
        parser.error("--users, --logins, --step-minutes and --concurrency must be positive (e.g. --users 10000)")

    if args.model is not None:
        process, base = (None, None) if args.url else start_service(args)
        try:
            result = engine_run(args, args.url or base + "/recommend")
            result["service"] = fetch_stats(base) if base else None
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=10)
        print(json.dumps(result))
        return
    built = time.perf_counter()
    batches = day_of_batches(args.users, args.logins, args.step_minutes, args.seed)
    sizes = np.array([len(b) for b in batches])
    print(f"{args.users:,} customers: {sizes.sum():,} decisions in {len(sizes)} batches (size median "
          f"{int(np.median(sizes))}, max {sizes.max()}), built in {time.perf_counter() - built:.1f} s")
    process, base = (None, None) if args.url else start_service(args)
    url = args.url or base + "/recommend"
    results = []
    try:
        print(f"{'concurrency':>11} {'calls/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>8} "
              f"{'http err':>8} {'timeouts':>8} {'other':>6} {'fallbacks':>9} {'in flight':>9}")
        for concurrency in args.concurrency:
            stats = run(url, batches, concurrency, args.timeout)
            failures = stats["failures"]
            http = sum(v for k, v in failures.items() if k.startswith("http "))
            other = stats["fallbacks"] - http - failures.get("timeout", 0)
            print(f"{concurrency:>11} {stats['calls_per_s']:>8.0f} {stats['latency_p50_ms']:>7.1f} "
                  f"{stats['latency_p90_ms']:>7.1f} {stats['latency_p99_ms']:>7.1f} {stats['latency_max_ms']:>8.1f} "
                  f"{http:>8} {failures.get('timeout', 0):>8} {other:>6} {stats['fallbacks']:>9} "
                  f"{stats['max_in_flight']:>9}")
            results.append(stats)
        served = fetch_stats(base) if base else None
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
    print(json.dumps({"users": args.users, "decisions": int(sizes.sum()), "batches": len(sizes),
                      "error_share": args.error_share, "stall_share": args.stall_share, "timeout_s": args.timeout,
                      "runs": results, "service": served}))


if __name__ == "__main__":
    main()
