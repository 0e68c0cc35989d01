"""The activity profile (models/profile.py): each customer's own weekly rates, learned as attributes."""

import numpy as np
import pandas as pd
import pytest

from twinsim.models.errors import TwinsimError
from twinsim.models.event_log import load_event_log
from twinsim.models.profile import PREFIX, profile_types, with_profile

DAY = 86400.0
START = pd.Timestamp("2025-01-01", tz="UTC").timestamp()


def _log(tmp_path, events: pd.DataFrame, users: pd.DataFrame | None = None):
    events.to_parquet(tmp_path / "events.parquet", index=False)
    if users is not None:
        users.to_parquet(tmp_path / "users.parquet", index=False)
    return load_event_log(tmp_path)


def _events(rows: list[tuple[str, float, str]]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": [r[0] for r in rows],
                         "timestamp": pd.to_datetime([START + r[1] * DAY for r in rows], unit="s", utc=True),
                         "event_type": [r[2] for r in rows]})


def test_the_profile_is_each_customers_weekly_rate_until_they_churn(tmp_path):
    """A customer who logs in daily for four weeks of a four-week window logs in 7 a week; one who logs in
    daily for one week and then closes the account also logs in 7 a week, not 7/4: churn ends the time a
    customer is observed. One who churns within a week counts as observed for one."""
    rows = [("daily", d, "login") for d in range(28)]
    rows += [("quitter", d, "login") for d in range(7)] + [("quitter", 7.0, "account_closed")]
    rows += [("brief", 2.0, "login"), ("brief", 3.0, "account_closed")]
    log = _log(tmp_path, _events(rows))
    profiled = with_profile(log, ["login"], ["account_closed"], START, START + 28 * DAY)
    rates = np.expm1(profiled.users.set_index("user_id")[PREFIX + "login"])
    assert np.allclose(rates[["daily", "quitter"]], 7.0) and np.isclose(rates["brief"], 1.0)


def test_only_frequent_non_terminal_types_are_profiled(tmp_path):
    rows = [(u, d, "login") for u in ("a", "b") for d in range(0, 70, 2)]  # 3.5 a week
    rows += [("a", 3.0, "fee"), ("b", 9.0, "account_closed")]  # rare; terminal
    log = _log(tmp_path, _events(rows))
    assert profile_types(log, ["account_closed"], START, START + 70 * DAY) == ["login"]  # fee: 1 in 11.3 weeks


def test_a_users_column_with_the_profiles_name_is_refused_with_a_fix(tmp_path):
    log = _log(tmp_path, _events([("a", 0.0, "login")]),
               pd.DataFrame({"user_id": ["a"], PREFIX + "login": [3.0]}))
    with pytest.raises(TwinsimError, match="rename them"):
        with_profile(log, ["login"], [], START, START + 7 * DAY)


def test_the_model_learns_the_profile_and_generated_users_do_not_show_it(model_dir):
    """The tiny model conditions on the profile of its frequent types; generation draws it with the other
    attributes and leaves it out of the users table it writes."""
    import json

    from twinsim.models.generate import GenerateConfig, generate

    schema = json.loads((model_dir / "model.json").read_text())["schema"]
    assert {PREFIX + "login", PREFIX + "card_payment"} <= set(schema["numeric_attributes"])
    users, events, _ = generate(model_dir, GenerateConfig(users=40, start=pd.Timestamp("2025-01-01"), days=30,
                                                          seed=3))
    assert not [c for c in users.columns if c.startswith(PREFIX)] and len(users) == 40 and len(events) > 0
