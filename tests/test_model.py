"""The event-sequence model: encoding, likelihood bookkeeping, training, model directory, generation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from twinsim.models import TwinModel
from twinsim.models.encoding import encode, fit_schema, split_of
from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import load_event_log
from twinsim.models.generate import GenerateConfig, generate
from twinsim.models.model_dir import load_model
from twinsim.models.training import TrainConfig, train
from twinsim.models.windows import CENSOR, EVENT, collate, make_windows, user_ended


def test_every_event_is_predicted_exactly_once_and_open_users_are_censored_once(small_log):
    schema = fit_schema(small_log)
    log = encode(small_log, schema)
    ended = user_ended(log, schema.terminal_codes)
    win = make_windows(log, 16)
    batch = collate(log, win, np.arange(len(win.user)), 16, ended, len(schema.event_types), schema.window_start_s)
    kind = batch["target_kind"].numpy()
    assert (kind == EVENT).sum() == len(log.event_type)
    assert (kind == CENSOR).sum() == (~ended).sum() > 0
    # each target event index appears once: the predicted (user, time) pairs are all distinct
    times = batch["target_log_gap"].numpy()[kind == EVENT]
    assert len(times) == len(log.event_type)


def test_schema_detects_churn_as_terminal_and_window_from_data(small_log):
    schema = fit_schema(small_log)
    assert schema.terminal_types == ["account_closed"]
    assert schema.window_start.startswith("2025-01-01") and schema.window_end.startswith("2025-05-01")
    assert schema.context_columns == ["macro_index"]


def test_user_split_is_deterministic_disjoint_and_roughly_80_10_10():
    ids = np.array([f"u{i}" for i in range(5000)])
    split = split_of(ids, seed=4)
    assert np.array_equal(split, split_of(ids, seed=4))
    assert not np.array_equal(split, split_of(ids, seed=5))
    share = np.bincount(split, minlength=3) / len(ids)
    assert abs(share[0] - 0.8) < 0.03 and abs(share[1] - 0.1) < 0.02


def test_transformer_beats_the_markov_baseline_on_holdout_nll(model_dir):
    metrics = json.loads((model_dir / "model.json").read_text())["metrics"]["holdout_nll_per_event"]
    assert metrics["transformer"]["total"] < metrics["baseline"]["total"]
    assert all(np.isfinite(v) for v in metrics["transformer"].values())


def test_model_directory_loads_with_weights_only_and_records_everything(model_dir):
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    manifest = json.loads((model_dir / "model.json").read_text())
    assert {"model_config", "schema", "metrics", "library_versions", "train_config", "history"} <= set(manifest)
    assert manifest["library_versions"]["torch"].startswith("2.")
    split = pd.read_parquet(model_dir / "split.parquet")
    assert set(split["split"]) == {"train", "validation", "holdout"} and split["user_id"].is_unique
    model, schema, _ = load_model(model_dir)
    assert not model.training and schema.event_types[0] == "account_closed"


def test_incompatible_or_unfinished_model_directory_fails_clearly(model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((model_dir / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(TwinsimError, match="version 99"):
        load_model(broken)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(TwinsimError, match="--resume"):
        load_model(unfinished)


def test_interrupted_training_resumes_to_the_same_weights(small_log, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64, seed=2, max_train_users=60)
    train(small_log, tmp_path / "full", model_overrides=TINY, config=config)

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(kind, info):
        if kind == "epoch_end":
            raise Interrupt

    with pytest.raises(Interrupt):
        train(small_log, tmp_path / "cut", model_overrides=TINY, config=config, on_event=stop_after_first_epoch)
    assert not (tmp_path / "cut" / "model.json").exists()
    train(small_log, tmp_path / "cut", model_overrides=TINY, config=config, resume=True)
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resume_with_other_options_is_refused(small_log, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, seed=2, max_train_users=40)
    train(small_log, tmp_path / "m", model_overrides=TINY, config=config)
    with pytest.raises(TwinsimError, match="other data or options"):
        train(small_log, tmp_path / "m", model_overrides=TINY, resume=True,
              config=TrainConfig(epochs=2, batch_size=32, seed=2, max_train_users=40))


def _generate(model_dir, **options):
    config = GenerateConfig(**{"users": 60, "start": pd.Timestamp("2025-01-01"), "days": 60, "seed": 5, **options})
    return generate(model_dir, config)


def test_generated_output_meets_the_contract_and_churn_is_terminal(model_dir, tmp_path):
    users, events, summary = _generate(model_dir)
    users.to_parquet(tmp_path / "users.parquet")
    events.to_parquet(tmp_path / "events.parquet")
    log = load_event_log(tmp_path)
    assert len(log.users) == 60 and summary["events"] == len(events) > 0
    assert events["timestamp"].min() >= pd.Timestamp("2025-01-01", tz="UTC")
    assert events["timestamp"].max() < pd.Timestamp("2025-03-02", tz="UTC")
    closed = events[events["event_type"] == "account_closed"]
    last = events.groupby("user_id").tail(1)
    assert closed.index.isin(last.index).all()
    amounts = events[events["event_type"].isin(["card_payment", "income"])]["amount"]
    assert amounts.notna().all() and (amounts >= 0).all()
    assert events.loc[events["event_type"] == "login", "amount"].isna().all()


def test_same_seed_gives_identical_output(model_dir):
    _, a, _ = _generate(model_dir, batch_size=64)
    _, b, _ = _generate(model_dir, batch_size=64)
    _, d, _ = _generate(model_dir, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(d)


def test_a_users_draws_do_not_depend_on_the_batch(model_dir):
    """Per-user random streams, and network calls padded to the same matrix kernels (models/rowwise.py):
    all users in one batch, batches refilled as users finish, or 7 users at a time give identical events,
    to the microsecond."""
    _, whole, _ = _generate(model_dir, users=150, batch_size=150)
    for batch_size in (70, 7):
        _, other, _ = _generate(model_dir, users=150, batch_size=batch_size)
        pd.testing.assert_frame_equal(whole, other)


def test_where_conditions_static_attributes(model_dir):
    users, events, _ = _generate(model_dir, where={"segment": ["retiree", "student"]})
    assert set(users["segment"].astype(str)) <= {"retiree", "student"}
    with pytest.raises(TwinsimError, match="unknown value"):
        _generate(model_dir, where={"segment": ["pirate"]})
    with pytest.raises(TwinsimError, match="no attribute"):
        _generate(model_dir, where={"planet": ["mars"]})


def test_python_api_mirrors_the_cli(small_world, tmp_path):
    twin = TwinModel.fit(small_world, tmp_path / "work", epochs=1, max_train_users=40, **TINY)
    saved = twin.save(tmp_path / "saved")
    again = TwinModel.load(saved)
    users, events = again.sample(10, start="2025-02-01", days=20, seed=1)
    assert len(users) == 10 and set(events["user_id"]) <= set(users["user_id"])
    assert again.metrics["holdout_nll_per_event"]["transformer"]["total"] > 0


def test_cached_step_by_step_pass_equals_the_training_forward_pass(model_dir, small_log):
    from twinsim.models.transformer import KVCache

    model, schema, _ = load_model(model_dir)
    log = encode(small_log, schema)
    window = model.cfg.window
    win = make_windows(log, window)
    longest = int(np.argmax(log.lengths[win.user] * (win.start == 0)))  # a full first window
    batch = collate(log, win, np.array([longest]), window, user_ended(log, schema.terminal_codes), model.bos,
                    schema.window_start_s)
    with torch.no_grad():
        expected = model.hidden(batch)[0]
        static = model.static(batch["static_cat"], batch["static_num"])
        cache = KVCache.empty(model.cfg, 1)
        cache.reset(torch.tensor([0]))
        steps = [model.step({k: batch[k][:, p] for k in ("type", "marks", "calendar", "cont", "recency", "memory",
                                                              "time_days")},
                            static, cache)[0] for p in range(window + 1)]
    assert torch.allclose(torch.stack(steps), expected, atol=1e-4)


def test_banded_training_pass_over_long_chunks_equals_the_cached_step_by_step_pass(small_log):
    """Chunks longer than the window (banded attention, two layers) compute each target's hidden state as
    sampling does, its ring cache wrapping many times; the chunks' shared prefix covers what reaches it."""
    from twinsim.models.training import model_config_for
    from twinsim.models.transformer import EventTransformer, KVCache

    schema = fit_schema(small_log)
    log = encode(small_log, schema)
    torch.manual_seed(0)
    model = EventTransformer(model_config_for(schema, d_model=32, n_layers=2, n_heads=4, window=8, mixture=2)).eval()
    ended = user_ended(log, schema.terminal_codes)
    user = int(np.argmax(log.lengths))
    n = int(log.lengths[user])
    whole = make_windows(log, 8, chunk=8 * -(-n // 8), layers=2)  # one chunk per user: all of this one
    one = collate(log, whole, np.flatnonzero(whole.user == user), 8, ended, model.bos, schema.window_start_s)
    win = make_windows(log, 8, chunk=64, layers=2)
    rows = np.flatnonzero(win.user == user)
    chunks = collate(log, win, rows, 8, ended, model.bos, schema.window_start_s)
    assert len(rows) >= 3 and n > 3 * 64
    with torch.no_grad():
        static = model.static(one["static_cat"], one["static_num"])
        cache = KVCache.empty(model.cfg, 1)
        cache.reset(torch.tensor([0]))
        steps = torch.stack([model.step({k: one[k][:, p] for k in ("type", "marks", "calendar", "cont", "recency",
                                                                       "memory", "time_days")}, static, cache)[0]
                             for p in range(n + 1)])
        assert torch.allclose(model.hidden(one)[0, :n + 1], steps, atol=1e-4)
        hidden = model.hidden(chunks)
    scored = chunks["target_kind"].numpy() != 0
    assert scored.sum() == n + (not ended[user])  # every event once, and the censoring if open
    for r, start in enumerate(win.start[rows]):
        p = np.flatnonzero(scored[r])
        assert torch.allclose(hidden[r, p], steps[start + p], atol=1e-4)


def test_overwrite_never_leaves_an_old_model_json_beside_a_new_unfinished_run(small_log, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64, seed=2, max_train_users=40)
    train(small_log, tmp_path / "m", model_overrides=TINY, config=config)
    assert (tmp_path / "m" / "model.json").exists()

    def stop(kind, info):
        if kind == "epoch_end":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_log, tmp_path / "m", model_overrides=TINY, config=config, overwrite=True, on_event=stop)
    with pytest.raises(TwinsimError, match="--resume"):
        load_model(tmp_path / "m")


def test_a_small_model_already_reproduces_rhythms_response_rates_volume_churn_and_amounts(model_dir, small_log):
    """At test scale (400 users x 120 days, a tiny model, 8 epochs). Paydays and the life-stage chain need
    the default model and scale; benchmarks/model_fidelity.py measures all laws there."""
    from twinsim.simulator.reference_world.fidelity import law_statistics, top_coverage

    _, synthetic, _ = _generate(model_dir, users=400, days=120, seed=2)
    real, syn = law_statistics(small_log.events), law_statistics(synthetic)
    assert abs(syn["click_rate"] - real["click_rate"]) <= 0.25 * real["click_rate"]
    assert syn["weekend_login_ratio"] < 0.9  # fewer logins at weekends, as in the real data (0.66)
    assert syn["income_at_night_share"] > 0.6
    assert abs(syn["events_per_user_median"] - real["events_per_user_median"]) <= 0.2 * real["events_per_user_median"]
    assert syn["closed_is_last_share"] == 1.0
    pay = small_log.events["event_type"] == "card_payment"
    coverage = top_coverage(small_log.events.loc[pay, "amount"],
                            synthetic.loc[synthetic["event_type"] == "card_payment", "amount"])
    assert 0.5 < coverage < 1.5
    medians = syn["card_amount_median_by_merchant"]  # amounts follow the merchant category (real: 8x)
    assert medians["travel"] > 3 * medians["grocery"]


def test_recency_hat_channel_interpolates_days_since_between_anchors():
    from twinsim.models.windows import RECENCY_ANCHOR_DAYS, RECENCY_PER_COLUMN, recency
    since = np.array([0.0, 3.0, 2.0, 20.0, 45.0, 364.0, 5_000.0])
    last = np.stack([-since, np.zeros_like(since)], axis=1)  # column 0 happened `since` days ago, column 1 now
    features = recency(np.zeros(len(since)), last, np.zeros_like(last), np.ones(len(since)))
    assert features.shape == (len(since), RECENCY_PER_COLUMN * 2)
    hats = features[:, 6:].reshape(len(since), len(RECENCY_ANCHOR_DAYS), 2)
    assert np.allclose(hats.sum(axis=1), 1.0)
    assert ((hats > 0).sum(axis=1) <= 2).all()
    anchors = np.log1p(RECENCY_ANCHOR_DAYS)
    inside = since < RECENCY_ANCHOR_DAYS[-1]  # within the anchors, the hats interpolate log(1 + days)
    assert np.allclose((hats[inside, :, 0] * anchors).sum(axis=1), np.log1p(since[inside]), atol=1e-5)
    assert hats[1, 2, 0] == 1.0 and hats[-1, -1, 0] == 1.0  # exactly on an anchor; beyond the last one
    assert (hats[:, 0, 1] == 1.0).all()  # column 1: zero days since


def test_memory_channel_keeps_the_latest_amount_decayed_sums_and_slow_counts():
    from twinsim.models import kernels
    from twinsim.models.encoding import MEMORY_COUNT_DAYS, MEMORY_SUM_DAYS, memory_inputs
    types = ["card_payment", "income", "login"]  # amount types: income (slot 0), card_payment (slot 1)
    slots = np.array([1, 0, -1])
    # user 0: income 1000 (day 0), card payment 50 (day 1), login (day 2), income 1100 (day 30); user 1: a login
    event_type = np.array([1, 0, 2, 1, 2])
    amount = np.array([1000.0, 50.0, np.nan, 1100.0, np.nan])
    amount_z = np.array([0.5, -1.0, 0.0, 0.7, 0.0], dtype=np.float32)
    days = np.array([0.0, 1.0, 2.0, 30.0, 5.0])
    offsets = np.array([0, 4, 5])
    state = kernels.memory_of_log(event_type, amount, amount_z, days, offsets, slots, 2, len(types),
                                  MEMORY_SUM_DAYS, MEMORY_COUNT_DAYS)
    last = state[3]
    assert np.allclose(last[:2], [0.7, -1.0])  # the latest standardised amounts: this income, the card payment
    assert np.isclose(last[2], 1000 * np.exp(-30 / MEMORY_SUM_DAYS) + 1100)
    assert np.isclose(last[3], 50 * np.exp(-29 / MEMORY_SUM_DAYS))
    assert np.allclose(last[4:7], [np.exp(-29 / MEMORY_COUNT_DAYS), np.exp(-30 / MEMORY_COUNT_DAYS) + 1,
                                   np.exp(-28 / MEMORY_COUNT_DAYS)])
    # days since each amount type's latest amount (+1; 0: never), then the days between its latest two, and
    # the two periods before: the income came 30 days after the previous one; the card payment has had no
    # second one yet
    assert np.allclose(last[7:15], [1.0, 30.0, 30.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    # the counts since the first event, never decayed, and the days since the first event plus one
    assert np.allclose(last[15:], [1.0, 2.0, 1.0, 31.0])
    assert np.allclose(state[4], [0, 0, 0, 0, 0, 0, 1] + [0] * 8 + [0, 0, 1, 1])  # another user starts afresh
    # Generation updates a batch row by row with the same rule: the same events give the same memory.
    batch = np.zeros((2, state.shape[1]))
    for i, gap in zip(range(4), (0.0, 1.0, 1.0, 28.0), strict=True):
        rows = np.array([0] if i else [0, 1])
        ty = np.array([event_type[i], 2])
        kernels.remember(batch, rows, np.array([gap, 5.0]), ty, np.array([amount[i], np.nan]),
                         np.array([amount_z[i], 0.0], dtype=np.float32), slots, 2, MEMORY_SUM_DAYS, MEMORY_COUNT_DAYS)
    assert np.allclose(batch, state[[3, 4]])
    inputs = memory_inputs(state, 2)
    assert inputs.dtype == np.float32 and np.allclose(inputs[3, 2:7], np.log1p(last[2:7]))
    # the latest periods, then the median periods (the day counters are not inputs), then the weekly rate
    # of each type since the first event and the days since it
    assert np.allclose(inputs[3, 7:11], np.log1p([30.0, 0.0, 30.0, 0.0]))
    assert np.allclose(inputs[3, 11:], np.log1p([7 / 31, 14 / 31, 7 / 31, 30.0]))
    assert np.allclose(memory_inputs(state, 2)[4, 11:], np.log1p([0.0, 0.0, 1.0, 0.0]))  # a rate over a week at least


def test_the_median_period_outvotes_one_odd_gap():
    """A fortnightly salary that came once after 28 days still reads as fortnightly in the median period,
    while the latest period says 28: one odd gap must not flip the customer's pay schedule."""
    from twinsim.models import kernels
    from twinsim.models.encoding import MEMORY_COUNT_DAYS, MEMORY_SUM_DAYS, median_period, memory_inputs
    days = np.array([0.0, 14.0, 28.0, 56.0])
    state = kernels.memory_of_log(np.zeros(4, np.int64), np.full(4, 1000.0), np.zeros(4, np.float32), days,
                                  np.array([0, 4]), np.array([0]), 1, 1, MEMORY_SUM_DAYS, MEMORY_COUNT_DAYS)
    assert np.allclose(state[:, 4:7], [[0, 0, 0], [14, 0, 0], [14, 14, 0], [28, 14, 14]])
    inputs = memory_inputs(state, 1)
    assert np.allclose(np.expm1(inputs[:, 3:5]), [[0, 0], [14, 14], [14, 14], [28, 14]], atol=1e-4)
    # of two periods, the mean; of one, itself; of none, 0
    periods = np.array([[[0.0], [0.0], [0.0]], [[9.0], [0.0], [0.0]], [[10.0], [20.0], [0.0]], [[5.0], [1.0], [3.0]]])
    assert np.allclose(median_period(periods)[:, 0], [0.0, 9.0, 15.0, 3.0])


def test_the_rate_since_the_first_event_outlasts_the_decayed_count():
    """A customer who paid every day for 20 weeks and then paused for 20 weeks is still a daily payer to the
    rate since the first event, long after the 91-day decayed count has forgotten: what keeps a heavy user
    heavy through a year-long rollout."""
    from twinsim.models import kernels
    from twinsim.models.encoding import MEMORY_COUNT_DAYS, MEMORY_SUM_DAYS, memory_inputs
    days = np.concatenate([np.arange(140.0), [280.0]])
    n = len(days)
    state = kernels.memory_of_log(np.zeros(n, np.int64), np.full(n, np.nan), np.zeros(n, np.float32), days,
                                  np.array([0, n]), np.array([-1]), 0, 1, MEMORY_SUM_DAYS, MEMORY_COUNT_DAYS)
    decayed, rate, elapsed = np.expm1(memory_inputs(state, 0)[-1])
    assert decayed < 0.25 * np.expm1(memory_inputs(state, 0)[139, 0])
    assert np.isclose(rate, 7 * 141 / 281) and np.isclose(elapsed, 280.0)


def test_a_model_that_says_never_for_every_type_generates_silent_customers(model_dir, tmp_path):
    """Every type's latent time can be never; when all are, the customer does nothing more, and generation
    still writes every customer (with no events) rather than failing on a gap of 114 years."""
    import shutil

    silent = tmp_path / "silent"
    shutil.copytree(model_dir, silent)
    state = torch.load(silent / "model.pt", weights_only=True)
    state["time.gate.weight"].zero_()
    state["time.gate.bias"][:] = torch.tensor([-50.0, -50.0, 50.0]).repeat(len(state["time.gate.bias"]) // 3)
    torch.save(state, silent / "model.pt")
    users, events, summary = _generate(silent, users=20, days=30)
    assert len(users) == 20 and len(events) == 0 and summary["events"] == 0
