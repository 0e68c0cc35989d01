"""The HTTP policy against real local services: the example recommender and tiny apps made here."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import socket

import numpy as np
import pandas as pd
import pytest
from aiohttp import web

from twinsim.scenarios.policies import load_policy
from twinsim.scenarios.policies.example_service import fetch_stats, make_app, request_share, serve_in_thread
from twinsim.scenarios.policies.http import HttpPolicy
from twinsim.scenarios.policy import Actions, Catalogue, DecisionBatch, Outcomes, PolicyError, as_actions

CATALOGUE = Catalogue(products=["savings", "loan", "card"])


def batch(n: int, user_ids=None) -> DecisionBatch:
    """``n`` requests of customers u0, u1, ...; request 0's customer clicked "loan" recently."""
    users = np.array(user_ids if user_ids is not None else [f"u{i}" for i in range(n)], dtype=object)
    recent = pd.DataFrame({"request": [0, 0, 1], "event_type": ["login", "offer_click", "card_payment"],
                           "timestamp": pd.to_datetime(["2025-01-01 08:00", "2025-01-01 09:00", "2025-01-01 10:00"],
                                                       utc=True),
                           "amount": [np.nan, np.nan, 12.5], "product": [None, "loan", None]})
    return DecisionBatch(request_id=np.array([f"{u}:0" for u in users]), user_id=users,
                         time=pd.date_range("2025-01-02", periods=n, freq="min", tz="UTC"),
                         attributes=pd.DataFrame({"segment": ["young"] * n, "income": np.arange(n) * 1000.0}),
                         recent=recent[recent["request"] < n], uniforms=np.random.default_rng(0).random((n, 4)))


def bound(url: str, **options) -> HttpPolicy:
    policy = HttpPolicy(url, **options)
    policy.bind(CATALOGUE, seed=0)
    return policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recording_app(received: list) -> web.Application:
    """Answers products[n % 3] for request "<user>:<n>"... by the user's number, later requests sooner
    (so answers arrive out of order), and keeps every request it got."""

    async def recommend(request: web.Request) -> web.Response:
        body = await request.json()
        received.append(body)
        k = int(str(body["user_id"]).lstrip("u"))
        await asyncio.sleep(0.002 * (20 - k % 20))
        return web.json_response({"request_id": body["request_id"], "product": body["products"][k % 3]})

    app = web.Application()
    app.router.add_post("/recommend", recommend)
    return app


def test_answers_come_back_in_request_order_with_the_schema():
    received: list = []
    with serve_in_thread(recording_app(received)) as url, bound(url + "/recommend", concurrency=8) as policy:
        actions = policy.decide(batch(40))
        assert list(actions.product) == [CATALOGUE.products[k % 3] for k in range(40)]
        assert list(actions.failure) == [None] * 40 and actions.propensity is None
        assert np.all(actions.latency_ms > 0)
        checked = as_actions(actions, 40, CATALOGUE, "http")
        assert list(checked.product) == list(actions.product)
    first = next(r for r in received if r["request_id"] == "u0:0")
    assert first["user_id"] == "u0" and first["time"] == "2025-01-02T00:00:00.000000Z"
    assert first["attributes"] == {"segment": "young", "income": 0.0}
    assert first["products"] == CATALOGUE.products
    assert first["recent_events"] == [
        {"event_type": "login", "timestamp": "2025-01-01T08:00:00.000000Z", "amount": None, "product": None},
        {"event_type": "offer_click", "timestamp": "2025-01-01T09:00:00.000000Z", "amount": None, "product": "loan"}]
    assert next(r for r in received if r["request_id"] == "u2:0")["recent_events"] == []


def test_integer_user_ids_travel_as_numbers():
    received: list = []
    with serve_in_thread(recording_app(received)) as url, bound(url + "/recommend") as policy:
        policy.decide(batch(3, user_ids=np.array([7, 8, 9], dtype=np.int64)))
    assert sorted(r["user_id"] for r in received) == [7, 8, 9]


def test_the_example_rule_and_the_concurrency_limit():
    with serve_in_thread(delay_ms=20) as url, bound(url + "/recommend", concurrency=3) as policy:
        actions = policy.decide(batch(24))
        served = fetch_stats(url)
        stats = policy.stats()
    assert actions.product[0] == "loan"  # u0 clicked loan and did not buy it
    assert set(actions.product) <= set(CATALOGUE.products) and np.all(actions.propensity == 1.0)
    assert served["requests"] == 24 and served["answered"] == 24
    assert 1 <= served["max_in_flight"] <= 3
    assert stats["max_in_flight"] == 3 and stats["calls"] == stats["answered"] == 24 and stats["fallbacks"] == 0
    assert stats["latency_p50_ms"] >= 20 and stats["calls_per_s"] > 0


def test_stalls_time_out_and_errors_take_the_fallback():
    n = 40
    with (serve_in_thread(error_share=0.25, stall_share=0.25, stall_s=5.0, seed=3) as url,
          bound(url + "/recommend", concurrency=n, timeout_s=0.5, fallback="savings") as policy):
        actions = policy.decide(batch(n))
        stats = policy.stats()
    share = np.array([request_share(3, f"u{i}:0") for i in range(n)])
    errors, stalls = share < 0.25, (share >= 0.25) & (share < 0.5)
    assert 0 < errors.sum() < n and 0 < stalls.sum() < n
    assert list(actions.failure[errors]) == ["http 503"] * errors.sum()
    assert list(actions.failure[stalls]) == ["timeout"] * stalls.sum()
    assert np.all(actions.latency_ms[stalls] >= 500)
    assert np.all(actions.product[errors | stalls] == "savings")
    assert np.all(np.isnan(actions.propensity[errors | stalls])) and np.all(actions.propensity[~(errors | stalls)] == 1)
    assert stats["failures"] == {"http 503": errors.sum(), "timeout": stalls.sum()}
    assert stats["fallbacks"] == (errors | stalls).sum() and stats["answered"] == n - stats["fallbacks"]
    as_actions(actions, n, CATALOGUE, "http")  # NaN propensities (not given) pass the engine's check


def test_malformed_answers_and_unknown_products_are_counted():
    answers = ["not json", "[1, 2]", {"request_id": "someone-else:0", "product": "loan"}, {"request_id": "RID"},
               {"request_id": "RID", "product": 5}, {"request_id": "RID", "product": "loan", "propensity": 2},
               {"request_id": "RID", "product": "yacht"}, {"request_id": "RID", "product": None},
               {"request_id": "RID", "product": "card", "propensity": 0.25}]

    async def recommend(request: web.Request) -> web.Response:
        body = await request.json()
        answer = answers[int(body["user_id"].lstrip("u"))]
        text = answer if isinstance(answer, str) else json.dumps(answer).replace("RID", body["request_id"])
        return web.Response(text=text, content_type="application/json")

    app = web.Application()
    app.router.add_post("/recommend", recommend)
    with serve_in_thread(app) as url, bound(url + "/recommend", fallback="loan") as policy:
        actions = policy.decide(batch(len(answers)))
        stats = policy.stats()
    assert list(actions.failure) == ["malformed"] * 6 + ["unknown product", None, None]
    assert list(actions.product) == ["loan"] * 7 + [None, "card"]
    assert np.isnan(actions.propensity[7]) and actions.propensity[8] == 0.25
    assert stats["failures"] == {"malformed": 6, "unknown product": 1} and stats["answered"] == 2


def test_a_dead_url_fails_every_request_but_not_the_run():
    port = free_port()
    url = f"http://127.0.0.1:{port}/recommend"
    with bound(url, timeout_s=0.5, feedback_url=url) as policy:
        actions = policy.decide(batch(5))
        assert list(actions.failure) == ["connection"] * 5 and list(actions.product) == [None] * 5
        with pytest.raises(PolicyError, match=f"{re.escape(url)}: nothing listens at 127.0.0.1:{port}.*start the"):
            policy.check()
        policy.feedback(outcomes(2))
        assert policy.stats()["feedback_failures"] == {"connection": 1}


def outcomes(n: int) -> Outcomes:
    return Outcomes(request_id=np.array([f"u{i}:0" for i in range(n)]), user_id=np.array([f"u{i}" for i in range(n)]),
                    product=np.array(["loan"] * n, dtype=object),
                    shown_time=pd.date_range("2025-01-02", periods=n, freq="h", tz="UTC"),
                    clicked=np.arange(n) % 2 == 0, purchased=np.zeros(n, dtype=bool), value=np.zeros(n))


def test_feedback_posts_arrive():
    with serve_in_thread() as url:
        with bound(url + "/recommend", feedback_url=url + "/feedback") as policy:
            policy.check()
            policy.feedback(outcomes(5))
            policy.feedback(outcomes(0))  # nothing to send: no POST
            assert policy.stats()["feedback_posts"] == 1 and policy.stats()["feedback_outcomes"] == 5
        served = fetch_stats(url)
    assert served["feedback_posts"] == 1 and served["outcomes"] == 5 and served["clicked"] == 3


def test_load_policy_passes_the_options_and_bad_ones_are_named():
    policy = load_policy("http://127.0.0.1:1/recommend", concurrency=4, timeout_s=0.5, fallback="savings")
    assert isinstance(policy, HttpPolicy)
    assert (policy.concurrency, policy.timeout_s, policy.fallback) == (4, 0.5, "savings")
    assert policy.name == "http-127.0.0.1-1-recommend"
    with pytest.raises(PolicyError, match="--fallback 'yacht'.*catalogue"):
        load_policy("http://127.0.0.1:1/recommend", fallback="yacht").bind(CATALOGUE, 0)
    with pytest.raises(PolicyError, match="--concurrency 0.*e.g. --concurrency 16"):
        HttpPolicy("http://127.0.0.1:1/", concurrency=0)
    with pytest.raises(PolicyError, match="--timeout.*e.g. --timeout 0.5"):
        HttpPolicy("http://127.0.0.1:1/", timeout_s="soon")
    with pytest.raises(PolicyError, match="feedback_url 'localhost:9'.*http://"):
        HttpPolicy("http://127.0.0.1:1/", feedback_url="localhost:9")
    with pytest.raises(PolicyError, match="before bind"):
        HttpPolicy("http://127.0.0.1:1/").decide(batch(1))


def test_close_reopens_and_a_pickled_copy_works():
    with serve_in_thread() as url:
        policy = bound(url + "/recommend")
        first = policy.decide(batch(4)).product
        policy.close()
        assert list(policy.decide(batch(4)).product) == list(first)  # a fresh session after close
        copy = pickle.loads(pickle.dumps(policy))
        assert list(copy.decide(batch(4)).product) == list(first)
        assert copy.stats()["calls"] == 12  # the counts travel with the copy
        copy.close()
        policy.close()


def test_propensities_may_be_missing_per_request_but_not_wrong():
    products = np.array(["loan", None], dtype=object)

    checked = as_actions(Actions(product=products, propensity=np.array([0.5, np.nan])), 2, CATALOGUE, "p")
    assert checked.propensity[0] == 0.5 and np.isnan(checked.propensity[1])
    for wrong in (0.0, np.inf, 1.5):
        with pytest.raises(PolicyError, match=r"numbers in \(0, 1\]"):
            as_actions(Actions(product=products, propensity=np.array([0.5, wrong])), 2, CATALOGUE, "p")


def test_the_example_service_names_bad_failure_shares():

    with pytest.raises(ValueError, match="error_share=1.5"):
        make_app(error_share=1.5)
    with pytest.raises(ValueError, match="lower one of them"):
        make_app(error_share=0.6, stall_share=0.6)
