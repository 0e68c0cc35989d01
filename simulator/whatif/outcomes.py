"""Per-customer outcomes of a run, generic over the event vocabulary.

For every event type: the number of events per customer; for every mark an event type carries, the number
per value of the mark (``offer_click[product=travel_card]``; a type carries a mark when at least ``CARRIES``
of its events have one, so a twin's rare stray mark on another type is no outcome); for every type that
carries amounts, their sum per customer (``card_payment:amount``, card spend); and, when there are terminal
types, whether the customer ended in the window (``churned``: its mean is the churned share). Logins are
just a type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from twinsim.simulator.whatif.runs import Run

CHURNED = "churned"
CARRIES = 0.05


@dataclass(frozen=True)
class Outcome:
    """What is measured per customer: ``kind`` is count, amount (a sum) or churned (0 or 1)."""

    name: str
    kind: str
    event_type: str | None = None
    mark: str | None = None
    value: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def outcomes_of(runs: list[Run], terminal_types: list[str]) -> list[Outcome]:
    """Every outcome any of ``runs`` can show (the union, so a type only the scenario has still counts)."""
    types: set[str] = set()
    values: dict[tuple[str, str], set[str]] = {}
    amounts: set[str] = set()
    per_type: dict[str, int] = {}
    marked: dict[tuple[str, str], int] = {}
    for run in runs:
        events = run.events
        kinds = events["event_type"].astype(str)
        types |= set(kinds.unique())
        amounts |= set(kinds[events["amount"].notna()].unique())
        for t, n in kinds.value_counts().items():
            per_type[t] = per_type.get(t, 0) + int(n)
        for mark in run.marks:
            has = events[mark].notna()
            for t, n in kinds[has].value_counts().items():
                marked[(t, mark)] = marked.get((t, mark), 0) + int(n)
            seen = events.loc[has, ["event_type", mark]].astype(str).drop_duplicates()
            for t, v in seen.itertuples(index=False):
                values.setdefault((t, mark), set()).add(v)
    values = {k: v for k, v in values.items() if marked[k] >= CARRIES * per_type[k[0]]}
    out = []
    for t in sorted(types):
        out.append(Outcome(t, "count", t))
        for (kind, mark), vals in sorted(values.items()):
            if kind == t:
                out += [Outcome(f"{t}[{mark}={v}]", "count", t, mark, v) for v in sorted(vals)]
    out += [Outcome(f"{t}:amount", "amount", t) for t in sorted(amounts)]
    if terminal_types:
        out.append(Outcome(CHURNED, "churned"))
    return out


def _rows(run: Run, outcome: Outcome, terminal_types: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row mask over the run's events, value of each event) for one outcome."""
    events = run.events
    if outcome.kind == "churned":
        return events["event_type"].isin(terminal_types).to_numpy(), np.ones(len(events))
    mask = (events["event_type"] == outcome.event_type).to_numpy()
    if outcome.mark is not None:
        mark = events[outcome.mark] if outcome.mark in events else pd.Series(None, index=events.index, dtype=object)
        mask = mask & (mark == outcome.value).fillna(False).to_numpy(dtype=bool)
    if outcome.kind == "amount":
        amount = events["amount"].to_numpy(dtype=float)
        return mask & np.isfinite(amount), np.nan_to_num(amount)
    return mask, np.ones(len(events))


def per_customer(run: Run, outcomes: list[Outcome], user_ids: pd.Index, terminal_types: list[str]) -> np.ndarray:
    """(customers x outcomes) values for the customers ``user_ids``, in their order (0 for no event)."""
    codes = pd.Categorical(run.events["user_id"], categories=user_ids).codes
    known = codes >= 0
    out = np.zeros((len(user_ids), len(outcomes)))
    for j, outcome in enumerate(outcomes):
        mask, value = _rows(run, outcome, terminal_types)
        mask = mask & known
        out[:, j] = np.bincount(codes[mask], weights=value[mask], minlength=len(user_ids))
    churned = [j for j, o in enumerate(outcomes) if o.kind == "churned"]
    out[:, churned] = np.minimum(out[:, churned], 1.0)
    return out


def cumulative(run: Run, outcome: Outcome, user_ids: pd.Index, terminal_types: list[str]) -> np.ndarray:
    """(customers x days) value of ``outcome`` from the window's start through the end of each day."""
    days = int(np.ceil((run.end - run.start) / pd.Timedelta(days=1)))
    codes = pd.Categorical(run.events["user_id"], categories=user_ids).codes
    day = ((run.events["timestamp"] - run.start) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)
    mask, value = _rows(run, outcome, terminal_types)
    mask = mask & (codes >= 0)
    daily = np.zeros(len(user_ids) * days)
    np.add.at(daily, codes[mask].astype(np.int64) * days + day[mask], value[mask])
    total = np.cumsum(daily.reshape(len(user_ids), days), axis=1)
    return np.minimum(total, 1.0) if outcome.kind == "churned" else total


def categorical_attributes(users: pd.DataFrame) -> list[str]:
    """The users table's categorical attributes: every column but user_id that is not a number."""
    return [c for c in users.columns if c != "user_id"
            and (not pd.api.types.is_numeric_dtype(users[c]) or pd.api.types.is_bool_dtype(users[c]))]
