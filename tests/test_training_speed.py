"""The faster training loop computes what the plain one did: the same batches, the same likelihood, the
same weights for the same seed (no timings here: ``benchmarks/training_throughput.py`` measures them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY

from twinsim.models.encoding import encode, fit_schema
from twinsim.models.training import TrainConfig, Workers, make_optimiser, model_config_for, train, train_step
from twinsim.models.transformer import EventTransformer
from twinsim.models.windows import EVENT, collate, make_windows, recency, user_ended


@pytest.fixture(scope="module")
def encoded(small_log):
    schema = fit_schema(small_log)
    log = encode(small_log, schema)
    return log, schema, make_windows(log, TINY["window"]), user_ended(log, schema.terminal_codes)


def test_query_recency_is_collated_for_the_event_targets_only_and_equals_the_full_grid(encoded):
    log, schema, win, ended = encoded
    rows = np.arange(min(40, len(win.user)))
    batch = collate(log, win, rows, TINY["window"], ended, len(schema.event_types), schema.window_start_s)
    is_event = batch["target_kind"].numpy() == EVENT
    assert batch["query_recency"].shape[0] == is_event.sum()
    # the full grid, as collate computed it before, at the event targets
    window = TINY["window"]
    users, start = win.user[rows], win.start[rows]
    n, base = log.lengths[users], log.offsets[users]
    rel = start[:, None] + np.arange(window)[None, :]
    has = rel < n[:, None]
    event = np.where(has, base[:, None] + rel, 0)

    def tokens(values, fill):
        body = np.where(has.reshape(has.shape + (1,) * (values.ndim - 1)), values[event], fill)
        return np.concatenate([np.broadcast_to(fill, (len(rows), 1) + values.shape[1:]), body], axis=1)

    from twinsim.models.encoding import NEVER
    from twinsim.models.windows import decay_over

    tok_days = (tokens(log.time_s, schema.window_start_s) - schema.window_start_s) / 86400.0
    j = start[:, None] + np.arange(window + 1)[None, :]
    target = np.where(is_event, base[:, None] + j, 0)
    target_days = (log.time_s[target] - schema.window_start_s) / 86400.0
    full = recency(target_days, tokens(log.last_days, NEVER), tokens(log.recent, 0.0),
                   decay_over(target_days - tok_days))
    assert np.array_equal(batch["query_recency"].numpy(), full[is_event])


def test_a_step_split_among_workers_takes_the_gradient_of_the_whole_batch(encoded):
    log, schema, win, ended = encoded
    rows = np.random.default_rng(0).permutation(len(win.user))[:48]

    def make_batch(r):
        return collate(log, win, r, TINY["window"], ended, len(schema.event_types), schema.window_start_s)

    torch.manual_seed(0)
    model = EventTransformer(model_config_for(schema, **TINY))
    parts = model.nll(make_batch(rows))
    (sum(parts[k] for k in ("time", "type", "marks", "amount")) / parts["events"]).backward()
    whole = {n: p.grad.clone() for n, p in model.named_parameters()}
    for threads in (1, 3):
        model.zero_grad(set_to_none=True)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: only the gradient is looked at
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 1.0)
        seen = dict.fromkeys(("time", "type", "marks", "amount", "events"), 0.0)
        with Workers(threads) as workers:
            loss = train_step(model, optimiser, schedule, workers, make_batch, rows, seen)
        assert seen["events"] == float(parts["events"])
        assert loss == pytest.approx(float(sum(parts[k].detach() for k in ("time", "type", "marks", "amount"))
                                           / parts["events"]), rel=1e-5)
        # clipped to norm 1 in the step: compare directions and the clipped norm
        total = torch.sqrt(sum((g * g).sum() for g in whole.values()))
        scale = min(1.0, 1.0 / (float(total) + 1e-6))
        for n, p in model.named_parameters():
            assert torch.allclose(p.grad, whole[n] * scale, rtol=1e-4, atol=1e-6), (threads, n)


def test_the_optimiser_falls_back_to_plain_adamw_where_the_fused_kernel_is_missing(encoded, monkeypatch):
    log, schema, _, _ = encoded
    model = EventTransformer(model_config_for(schema, **TINY))
    real = torch.optim.AdamW

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("fused=True requires all the params to be floating point Tensors of supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    optimiser = make_optimiser(model, 1e-3, 0.01)
    assert isinstance(optimiser, real) and not optimiser.defaults.get("fused")


def test_the_same_seed_trains_the_same_weights(small_log, tmp_path):
    config = TrainConfig(epochs=1, seed=3, max_train_users=40)
    for name in ("a", "b"):
        train(small_log, tmp_path / name, model_overrides=TINY, config=config)
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
