"""The twinsim command line. Thin: parses options, calls the packages, prints results.

Exit codes: 0 success; 1 a check failed; 2 bad input or options (one clear message, a traceback only
with --debug).
"""

from __future__ import annotations

import json
import sys
from datetime import date, datetime
from pathlib import Path

import click

from twinsim.models.errors import TwinsimError

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class TwinsimGroup(click.Group):
    """Prints :class:`TwinsimError` as one message and exits 2, unless ``--debug`` asks for the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TwinsimError as exc:
            if ctx.params.get("debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(EXIT_BAD_INPUT)


@click.group(cls=TwinsimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="twinsim", prog_name="twinsim")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def main(debug: bool) -> None:
    """twinsim: learn how customers behave over time, then simulate synthetic customers.

    \b
    Start with the reference world (a stand-in for a bank's event log):
      twinsim reference-world --users 5000 --days 365 --seed 7 -o runs/world
      twinsim inspect runs/world
    """


def _parse_date(ctx, param, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a date; write it as YYYY-MM-DD, e.g. 2025-01-01") from None


@main.command("reference-world")
@click.option("--users", default=5_000, show_default=True, help="Number of customers.")
@click.option("--days", default=365, show_default=True, help="Length of the window in days.")
@click.option("--start", default="2025-01-01", show_default=True, callback=_parse_date,
              help="First day of the window (YYYY-MM-DD, UTC).")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same files.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Directory to write (must be new or empty unless --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--scenario", default=None,
              help="A scenario the world's customers live through (TOML file, docs/scenarios.md, or a built-in "
                   "such as travel_card_at_login or downturn); writes exposures.parquet and assignments.parquet. "
                   "Same seed without it: the baseline world.")
@click.option("--policy", default=None,
              help="A recommender policy that chooses the offer at the world's logins (random, logged, "
                   "module:Class, file.py:Class, http://...; docs/recommenders.md). Without it: the bank's own.")
@click.option("--policy-start", default=None,
              help="The first day the policy decides (YYYY-MM-DD or a day number of the window; default: day 0); "
                   "before it the bank's own offers, as in the baseline.")
@click.option("--share", default=None, type=float,
              help="The share of logins that are decision points, in (0, 1] (default 0.25: exactly the logins "
                   "where the bank shows an offer).")
def reference_world(users: int, days: int, start: date, seed: int, output: Path, overwrite: bool,
                    quiet: bool, scenario: str | None, policy: str | None, policy_start: str | None,
                    share: float | None) -> None:
    """Generate the reference bank world: events + users in the data contract.

    An agent-based stand-in for a bank's private event log (logins, income, card payments, offers and
    responses, life-stage chains, a macro downturn, churn). Its laws are in docs/reference-world.md.
    Writes events.parquet, users.parquet, context.parquet, decisions.parquet and world.json. With --scenario
    the world's own customers respond to its campaigns and its economy takes its shocks: the ground truth of a
    what-if. With --policy a recommender chooses the offers at login: the ground truth of a policy.

    \b
    Examples:
      twinsim reference-world --users 5000 --days 365 --seed 7 -o runs/world
      twinsim reference-world --users 5000 --days 365 --seed 7 --scenario travel_card_at_login -o runs/world-push
      twinsim reference-world --users 5000 --days 365 --seed 7 --policy random --policy-start 2025-07-01 -o runs/rnd
    """
    from twinsim.simulator.reference_world import WorldConfig, generate_reference_world

    config = WorldConfig(users=users, days=days, start=start, seed=seed)
    config.validate()
    with click.progressbar(length=users * days, label="simulating user-days", file=sys.stderr,
                           hidden=quiet) as bar:
        manifest = generate_reference_world(config, output, overwrite=overwrite, progress=bar.update,
                                            scenario=scenario, policy=policy, policy_start=policy_start,
                                            share=share)
    counts, timing = manifest["counts"], manifest["timing"]
    for name, c in manifest.get("exposures", {}).items():
        click.echo(f"campaign {name}: {c['exposures']:,} exposures of {c['customers_exposed']:,} customers "
                   f"({c['treatment']:,} assigned to treatment, {c['control']:,} to control)")
    if policy is not None:
        p = manifest["policy"]
        click.echo(f"policy {p['name']}: {p['policy_decisions']:,} decisions from {p['start']}, "
                   f"{p['policy_shows']:,} offers shown" + "".join(f", {k}: {v:,}" for k, v in p["failures"].items()))
    click.echo(f"wrote {counts['events']:,} events of {counts['users']:,} users to {output} "
               f"({counts['users_closed']:,} closed their account) in {timing['seconds']:.1f} s "
               f"({timing['events_per_second']:,.0f} events/s)")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--users", "users", type=click.Path(path_type=Path), default=None,
              help="Users table (file or directory); default: the dataset directory's users entry.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(path: Path, users: Path | None, as_json: bool) -> None:
    """Validate an event log against the data contract and summarise it.

    PATH is an events file (.parquet/.csv), a directory of them, or a dataset directory holding
    events.parquet (and optionally users.parquet), such as one written by reference-world.

    \b
    Examples:
      twinsim inspect runs/world
      twinsim inspect events.csv --users customers.csv --json
    """
    from twinsim.models.event_log import load_event_log
    from twinsim.models.summary import format_summary, summarize

    log = load_event_log(path, users)
    for note in log.notes:
        click.secho(f"warning: {note}", fg="yellow", err=True)
    summary = summarize(log)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Model directory to write.")
@click.option("--users", "users", type=click.Path(path_type=Path), default=None,
              help="Users table, if DATA is not a dataset directory that has one.")
@click.option("--epochs", default=8, show_default=True, help="Maximum passes over the training users.")
@click.option("--batch-size", default=64, show_default=True,
              help="Windows per optimisation step (with --chunk: steps of as many tokens).")
@click.option("--lr", default=3e-3, show_default=True, help="Peak learning rate (AdamW, cosine decay).")
@click.option("--patience", default=2, show_default=True, help="Stop after this many epochs without improvement.")
@click.option("--d-model", default=64, show_default=True, help="Width of the transformer.")
@click.option("--layers", default=2, show_default=True, help="Transformer blocks.")
@click.option("--heads", default=4, show_default=True, help="Attention heads (one always has long memory).")
@click.option("--window", default=32, show_default=True, help="Events of context the model sees.")
@click.option("--chunk", type=int, default=None,
              help="Train on chunks of this many events (a multiple of --window) with banded attention, exactly "
                   "as sampling computes, each event once; default: half-overlapping windows (docs/model.md).")
@click.option("--max-train-users", type=int, default=None, help="Train on a random subset of the training users.")
@click.option("--terminal", multiple=True,
              help="Terminal event type(s); default: detected (always a user's last event).")
@click.option("--dp-epsilon", type=float, default=None,
              help="Train with user-level differential privacy (DP-SGD) to this epsilon; needs twinsim[dp].")
@click.option("--dp-delta", type=float, default=1e-5, show_default=True, help="Delta of the DP guarantee.")
@click.option("--dp-max-grad-norm", type=float, default=1.0, show_default=True,
              help="DP: each user's gradient is clipped to this L2 norm.")
@click.option("--dp-users-per-step", type=int, default=512, show_default=True,
              help="DP: expected number of users drawn (Poisson) per step.")
@click.option("--calendar-off", "calendar_off", multiple=True,
              help="A calendar input the model does not read (repeatable: month, hour, weekday, day_of_month, "
                   "days_to_month_end). In a log of one year the month is also the time since it began: "
                   "--calendar-off month keeps a continuation past it from replaying the log's start "
                   "(docs/model.md).")
@click.option("--seed", default=0, show_default=True, help="Seed for the user split, initialisation and shuffling.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(data: Path, output: Path, users: Path | None, epochs: int, batch_size: int, lr: float, patience: int,
          d_model: int, layers: int, heads: int, window: int, chunk: int | None, max_train_users: int | None,
          terminal: tuple[str, ...],
          dp_epsilon: float | None, dp_delta: float, dp_max_grad_norm: float, dp_users_per_step: int,
          calendar_off: tuple[str, ...], seed: int, resume: bool, overwrite: bool, quiet: bool) -> None:
    """Train the event-sequence transformer (and the Markov baseline) on an event log.

    Users are split by a hash of their id into train / validation / holdout (80/10/10); the split is
    saved with the model. Each epoch prints the held-out NLL per event (time, type, marks, amount).
    With --dp-epsilon, every step clips each drawn customer's whole-history gradient and adds noise;
    the epsilon spent is written to model.json (docs/validation.md, "Differential privacy").

    \b
    Examples:
      twinsim train runs/world -o runs/model --epochs 8
      twinsim train runs/world -o runs/model-dp --dp-epsilon 8 --epochs 8
    """
    from twinsim.models.event_log import load_event_log
    from twinsim.models.training import TrainConfig
    from twinsim.models.training import train as fit

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                         chunk=chunk, max_train_users=max_train_users, dp_epsilon=dp_epsilon, dp_delta=dp_delta,
                         dp_max_grad_norm=dp_max_grad_norm, dp_users_per_step=dp_users_per_step,
                         calendar_off=tuple(calendar_off))
    config.validate()
    log = load_event_log(data, users)
    for note in log.notes:
        click.secho(f"warning: {note}", fg="yellow", err=True)
    bar = None

    def on_event(kind: str, info: dict) -> None:
        nonlocal bar
        if kind == "start":
            click.echo(f"training on {info['train_users']:,} users ({info['windows']:,} windows), validating on "
                       f"{info['validation_users']:,}, holdout {info['holdout_users']:,}; "
                       f"{info['parameters']:,} parameters; terminal: {', '.join(info['terminal_types']) or 'none'}",
                       err=True)
        elif kind == "epoch_start":
            bar = click.progressbar(length=info["batches"], label=f"epoch {info['epoch'] + 1}", file=sys.stderr,
                                    hidden=quiet)
            bar.__enter__()
        elif kind == "batch" and bar is not None:
            bar.update(1)
        elif kind == "epoch_end":
            if bar is not None:
                bar.__exit__(None, None, None)
            v = info["validation"]
            click.echo(f"epoch {info['epoch'] + 1}: validation NLL/event {v['total']:.3f} (time {v['time']:.3f}, "
                       f"type {v['type']:.3f}, marks {v['marks']:.3f}, amount {v['amount']:.3f}) "
                       f"in {info['seconds']:.0f} s", err=True)
        elif kind == "resumed":
            click.echo(f"resuming at epoch {info['epoch'] + 1}", err=True)

    metrics = fit(log, output, model_overrides={"d_model": d_model, "n_layers": layers, "n_heads": heads,
                                                 "window": window},
                  config=config, resume=resume, overwrite=overwrite, terminal=list(terminal) or None,
                  on_event=on_event)
    t, b = metrics["holdout_nll_per_event"]["transformer"], metrics["holdout_nll_per_event"]["baseline"]
    click.echo(f"holdout NLL per event: transformer {t['total']:.3f}, baseline {b['total']:.3f} "
               f"(time {t['time']:.3f} vs {b['time']:.3f}, type {t['type']:.3f} vs {b['type']:.3f}, "
               f"marks {t['marks']:.3f} vs {b['marks']:.3f}, amount {t['amount']:.3f} vs {b['amount']:.3f})")
    if "privacy_epsilon" in metrics:
        click.echo(f"differential privacy: epsilon {metrics['privacy_epsilon']:.3g} at delta {dp_delta:g} "
                   "(user level, network weights; see model.json \"privacy\")")
    click.echo(f"model written to {output}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-n", "--users", default=1_000, show_default=True, help="Number of new customers.")
@click.option("--start", default="2025-01-01", show_default=True, callback=_parse_date,
              help="First day to simulate (YYYY-MM-DD, UTC).")
@click.option("--days", default=365, show_default=True, help="Days to simulate.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the same seed gives the same output.")
@click.option("--where", multiple=True, help="Condition static attributes, e.g. --where segment=student,retiree.")
@click.option("--batch-size", default=4096, show_default=True, help="Users sampled side by side.")
@click.option("--workers", type=int, default=None,
              help="Processes sampling contiguous chunks of users (default: the cores available; at most one per "
                   "64 users). The output does not depend on it.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Directory for users.parquet, events.parquet and generate.json.")
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(model_dir: Path, users: int, start: date, days: int, seed: int, where: tuple[str, ...],
             batch_size: int, workers: int | None, output: Path, overwrite: bool, quiet: bool) -> None:
    """Generate new synthetic customers and their events from a trained model.

    Output follows the event-log contract, so it can be fed back into inspect and train.

    \b
    Example:
      twinsim generate runs/model -n 5000 --start 2025-01-01 --days 365 -o runs/synthetic
    """
    import pandas as pd

    from twinsim.models.artifacts import atomic_output_dir, check_output_dir, write_json
    from twinsim.models.generate import GenerateConfig, parse_where
    from twinsim.models.generate import generate as sample
    from twinsim.simulator.parallel import default_workers

    config = GenerateConfig(users=users, start=pd.Timestamp(start), days=days, seed=seed, where=parse_where(where),
                            batch_size=batch_size)
    config.validate()
    check_output_dir(output, overwrite)
    with click.progressbar(length=users, label="users", file=sys.stderr, hidden=quiet) as bar:
        last = [0]

        def on_progress(done: int, total: int) -> None:
            bar.update(done - last[0])
            last[0] = done

        frame_users, events, summary = sample(model_dir, config, on_progress, workers=workers or default_workers())
    with atomic_output_dir(output, overwrite) as tmp:
        frame_users.to_parquet(tmp / "users.parquet", index=False)
        events.to_parquet(tmp / "events.parquet", index=False)
        write_json(tmp / "generate.json", summary)
    click.echo(f"wrote {summary['events']:,} events of {users:,} synthetic users to {output} "
               f"({summary['events_per_second']:,.0f} events/s)")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-n", "--users", type=int, default=None,
              help="New synthetic customers to simulate (default 1000; with --history: the log's customers).")
@click.option("--start", default=None, callback=_parse_date,
              help="First simulated day, YYYY-MM-DD (with --history default: the day its observation ends).")
@click.option("--days", default=30, show_default=True, help="Simulated days.")
@click.option("--scenario", default="baseline", show_default=True,
              help="A scenario TOML file (docs/scenarios.md), or a built-in: baseline, travel_card_push, "
                   "travel_card_at_login, downturn.")
@click.option("--seed", default=0, show_default=True, help="Seed of every user's random streams.")
@click.option("--history-days", default=30, show_default=True,
              help="Days of history sampled for new customers before --start (written to history/).")
@click.option("--history", "history", type=click.Path(path_type=Path), default=None,
              help="An event log whose customers are continued from the end of its observation (a users table "
                   "only if the model has attributes).")
@click.option("--observed-until", "observed_until", default=None,
              help="With --history: when the log's observation ended, YYYY-MM-DD[THH:MM] (default: the end of the "
                   "day of its last event). No customer had an event between their last one and then.")
@click.option("--cohort-size", type=int, default=None,
              help="Users simulated together; memory grows with it (about 35 KB a user). Default: as few "
                   "cohorts as fill every worker equally, at most 16,384 users each.")
@click.option("--workers", type=int, default=None,
              help="Processes the cohorts run in, side by side (default: the cores available). The output does not "
                   "depend on it; a run may be resumed with another count.")
@click.option("--ray", "ray", default=None, metavar="ADDRESS",
              help="Run the cohorts as Ray tasks: a cluster's address, auto (the cluster of this machine), or local "
                   "(a new instance with --workers CPUs). Needs the ray extra and an --output every node writes to.")
@click.option("-o", "--output", "output", required=True,
              help="Run directory: a path, or a URI pyarrow opens (s3://bucket/run, file:///shared/run).")
@click.option("--resume", is_flag=True, help="Finish an interrupted run in --output (same options).")
@click.option("--overwrite", is_flag=True, help="Replace --output if it holds something.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def simulate(model_dir: Path, users: int | None, start: date | None, days: int, scenario: str, seed: int,
             history_days: int, history: Path | None, observed_until: str | None, cohort_size: int,
             workers: int | None, ray: str | None, output: str, resume: bool, overwrite: bool, quiet: bool) -> None:
    """Simulate a population of synthetic customers living on in time, under a scenario.

    Events stream into OUTPUT/events/date=YYYY-MM-DD/ (Parquet, one partition per day), with users.parquet
    and manifest.json (config, seed, model hash, counts, timings). Same seed and options: same output.

    \b
    Examples:
      twinsim simulate runs/model --users 100000 --start 2025-06-01 --days 30 -o runs/sim
      twinsim simulate runs/model --users 100000 --start 2025-06-01 --days 30 \\
          --scenario travel_card_push -o runs/sim-campaign
      twinsim simulate runs/model --history runs/world --days 30 -o runs/twins
      twinsim simulate runs/model --users 10000000 --start 2025-06-01 --days 30 --ray auto -o s3://bucket/sim
    """
    import time

    from twinsim.simulator.engine import Progress, SimulateConfig
    from twinsim.simulator.engine import simulate as run
    from twinsim.simulator.parallel import default_workers

    if users is not None and history is not None:
        raise TwinsimError("give either --users (new customers) or --history (continue a log's customers), not both")
    config = SimulateConfig(users=None if history else (users or 1000), start=str(start) if start else None,
                            days=days, seed=seed, scenario=scenario, history_days=history_days,
                            history=str(history) if history else None, observed_until=observed_until,
                            cohort_size=cohort_size)
    shown = [0.0]

    def on_progress(p: Progress) -> None:
        now = time.monotonic()
        if quiet or (now - shown[0] < 2.0 and p.fraction < 1.0):
            return
        shown[0] = now
        click.echo(f"cohort {p.cohort + 1}/{p.cohorts}  {p.date:%Y-%m-%d}  {p.events:,} events  "
                   f"{p.events_per_s:,.0f} events/s  {p.alive:,} users alive  {p.fraction:.0%} done  "
                   f"ETA {p.eta_s / 60:.1f} min", err=True)

    manifest = run(model_dir, config, output, resume=resume, overwrite=overwrite, on_progress=on_progress,
                   workers=workers or default_workers(), ray=ray)
    click.echo(f"simulated {manifest['users']:,} users: {manifest['events']:,} events in {config.days} days "
               f"(+ {manifest['history_events']:,} history events, {manifest['exposures']:,} campaign exposures) "
               f"to {output} ({manifest['events_per_second_this_attempt']:,} events/s)")
    for name, c in manifest.get("campaigns", {}).items():
        budget = ", ".join(f"{c[k]:,} {what}" for k, what in (("budget_total", "in all"), ("budget_per_day", "a day"))
                           if c[k] is not None)
        click.echo(f"  campaign {name}: {c['exposures']:,} exposures; {c['treatment']:,} customers in treatment, "
                   f"{c['control']:,} in control" + (f"; budget {budget}" if budget else ""))


class _Several(click.Option):
    """A repeatable option that also takes every value after it up to the next option: ``--models M2 M3``
    is ``--models M2 --models M3``."""

    def add_to_parser(self, parser, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name) or parser._short_opt.get(name)
            if option is None:
                continue

            def process(value, state, store=option.process) -> None:
                store(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    store(state.rargs.pop(0), state)

            option.process = process


def _customers(command):
    """The customers of a paired experiment (whatif, recommend): new ones from --start, or a log's."""
    for option in reversed([
        click.option("-n", "--users", type=int, default=None, help="New synthetic customers (with --start)."),
        click.option("--start", default=None, callback=_parse_date,
                     help="First simulated day, YYYY-MM-DD (with --history default: the day its observation ends)."),
        click.option("--history", "history", type=click.Path(path_type=Path), default=None,
                     help="Instead of --users: an event log whose customers are continued from the end of its "
                          "observation."),
        click.option("--observed-until", "observed_until", default=None,
                     help="With --history: when the log's observation ended (as for simulate)."),
    ]):
        command = option(command)
    return command


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--scenario", required=True,
              help="The scenario: a TOML file, or a built-in (travel_card_push); the other arm is the baseline.")
@_customers
@click.option("--days", default=30, show_default=True, help="Simulated days; outcomes count the events in them.")
@click.option("--history-days", default=30, show_default=True,
              help="Days of history sampled for new customers before --start.")
@click.option("--models", "models", cls=_Several, multiple=True, type=click.Path(path_type=Path),
              help="More models of the same data trained with other seeds (--models M2 M3): the interval then "
                   "includes model uncertainty (Rubin's rules).")
@click.option("--seed", default=0, show_default=True, help="Seed of every user's random streams, in both arms.")
@click.option("--cohort-size", type=int, default=None, help="Users simulated together (default: as simulate).")
@click.option("--workers", type=int, default=None,
              help="Processes the cohorts run in (default: the cores available); the output does not depend on it.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="What-if directory: baseline/, scenario/ (models/K/ for --models), uplift.json, uplift.html.")
@click.option("--resume", is_flag=True, help="Finish an interrupted what-if in --output (same options).")
@click.option("--overwrite", is_flag=True, help="Replace --output if it holds something.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def whatif(model_dir: Path, scenario: str, users: int | None, start: date | None, history: Path | None,
           observed_until: str | None, days: int, history_days: int, models: tuple[Path, ...], seed: int,
           cohort_size: int | None, workers: int | None, output: Path, resume: bool, overwrite: bool,
           quiet: bool) -> None:
    """What would a scenario do? The same customers with and without it, and the uplift with 95 % intervals.

    Runs the baseline and the scenario with common random numbers (same seed, customers, start and days),
    so every difference is the scenario's, then writes uplift.json and a self-contained uplift.html: per
    outcome (events of each type, per product, amounts, churn) the baseline, the scenario, absolute and
    relative uplift, per segment, over time, exposures and budget, and an A/B readout where the scenario
    holds out a control share. docs/whatif.md explains the report.

    \b
    Examples:
      twinsim whatif runs/model --scenario travel_card_push --users 10000 --start 2025-06-01 --days 30 \\
          -o runs/whatif
      twinsim whatif runs/model --scenario my_campaign.toml --history runs/world --days 30 \\
          --models runs/model-s2 runs/model-s3 -o runs/whatif-log
    """

    from twinsim.simulator.parallel import default_workers
    from twinsim.simulator.whatif import WhatifConfig
    from twinsim.simulator.whatif import whatif as run

    config = WhatifConfig(scenario=scenario, days=days, users=users, start=str(start) if start else None,
                          history=str(history) if history else None, observed_until=observed_until,
                          history_days=history_days, seed=seed, cohort_size=cohort_size)
    report = run(model_dir, config, output, models=models, workers=workers or default_workers(), resume=resume,
                 overwrite=overwrite, on_progress=_labelled_progress(quiet))
    customers = report["runs"][0]["customers"]["paired"]
    click.echo(f"what-if of {report['scenario'].get('name', scenario)!r}: {customers:,} customers paired, "
               f"{report['models']} model(s); {report['interval']}")
    for line in report["summary"]:
        click.echo(f"  {line}")
    click.echo(f"report written to {output / 'uplift.html'} and {output / 'uplift.json'}")


def _labelled_progress(quiet: bool):
    """A progress printer for experiments of several runs: a line per run label, at most every 2 s."""
    import time

    shown = [0.0, ""]

    def on_progress(label: str, p) -> None:
        now = time.monotonic()
        if quiet or (now - shown[0] < 2.0 and p.fraction < 1.0 and label == shown[1]):
            return
        shown[0], shown[1] = now, label
        click.echo(f"{label}: cohort {p.cohort + 1}/{p.cohorts}  {p.date:%Y-%m-%d}  {p.events:,} events  "
                   f"{p.events_per_s:,.0f} events/s  {p.fraction:.0%} done  ETA {p.eta_s / 60:.1f} min", err=True)

    return on_progress


def _parse_values(ctx, param, value: str | None) -> dict[str, float]:
    """--values savings=120,mortgage=900 or a JSON file {"savings": 120, ...}."""
    if not value:
        return {}
    if Path(value).is_file():
        try:
            table = json.loads(Path(value).read_text())
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"{value} is not JSON ({e}); e.g. {{\"savings\": 120, \"mortgage\": 900}}") from e
    else:
        table = {}
        for item in value.split(","):
            name, eq, number = item.partition("=")
            if not eq:
                raise click.BadParameter(f"{item!r} is not PRODUCT=VALUE; e.g. --values savings=120,mortgage=900 "
                                         "or a JSON file")
            table[name.strip()] = number
    try:
        return {str(k): float(v) for k, v in table.items()}
    except (TypeError, ValueError) as e:
        raise click.BadParameter(f"every value must be a number ({e}); e.g. --values savings=120,mortgage=900") from e


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--policy", "policies", multiple=True, required=True,
              help="A policy under test (repeat for several): random, logged, popular, segment-greedy, "
                   "epsilon-greedy:epsilon=0.1, thompson, fixed:product=savings, module:Class, file.py:Class, "
                   "or http://HOST:PORT/PATH.")
@_customers
@click.option("--days", default=30, show_default=True, help="Simulated days with the policy deciding.")
@click.option("--history-days", default=30, show_default=True,
              help="Days of history sampled for new customers before --start (the bank's own offers).")
@click.option("--share", default=1.0, show_default=True,
              help="Share of trigger events (logins) that are decision points (each customer's own draw).")
@click.option("--trigger", default="login", show_default=True, help="The event type that is a decision point.")
@click.option("--values", "values", default=None, callback=_parse_values,
              help="Revenue per purchase: savings=120,mortgage=900 or a JSON file (default 1 per purchase).")
@click.option("--concurrency", default=16, show_default=True, help="HTTP policies: requests in flight.")
@click.option("--timeout", "timeout_s", default=1.0, show_default=True, help="HTTP policies: seconds per request.")
@click.option("--fallback", default=None,
              help="HTTP policies: the product shown when the service fails or times out (default: nothing).")
@click.option("--feedback-url", default=None,
              help="HTTP policies: where the outcomes of shown offers are POSTed, one JSON array per daily update "
                   "(e.g. http://127.0.0.1:8080/feedback; default: none).")
@click.option("--seed", default=0, show_default=True, help="Seed of every user's random streams, in every run.")
@click.option("--cohort-size", type=int, default=None,
              help="Customers simulated together; a learning policy learns from its cohort (default: up to 16,384).")
@click.option("--workers", type=int, default=None,
              help="Processes the cohorts run in (default: the cores available); the output does not depend on it.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Recommend directory: policies/K-NAME/ (one simulate run each), report.json, report.html.")
@click.option("--resume", is_flag=True, help="Finish an interrupted recommend in --output (same options).")
@click.option("--overwrite", is_flag=True, help="Replace --output if it holds something.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def recommend(model_dir: Path, policies: tuple[str, ...], users: int | None, start: date | None,
              history: Path | None, observed_until: str | None, days: int, history_days: int, share: float,
              trigger: str, values: dict, concurrency: int, timeout_s: float, fallback: str | None,
              feedback_url: str | None, seed: int, cohort_size: int | None, workers: int | None, output: Path,
              resume: bool, overwrite: bool, quiet: bool) -> None:
    """Recommenders in the loop: each policy decides what the same customers are shown at their logins.

    Every policy runs on the same customers with common random numbers (same seed, start, days and decision
    points); the model draws what each customer does with what they are shown (clicks, purchases, fatigue,
    churn). Writes report.json and a self-contained report.html: decisions, shows, CTR, purchases per show,
    revenue, coverage, diversity, fatigue, churn, product-mix drift and, for HTTP policies, latency and
    failures. docs/recommenders.md explains the policy interface and the report.

    \b
    Examples:
      twinsim recommend runs/model --policy random --policy logged --policy thompson \\
          --users 5000 --start 2025-06-01 --days 28 --share 0.25 -o runs/recommend
      twinsim recommend runs/model --policy http://127.0.0.1:8080/recommend --concurrency 32 --timeout 0.5 \\
          --users 2000 --start 2025-06-01 --days 7 -o runs/recommend-http
    """
    from twinsim.simulator.parallel import default_workers
    from twinsim.simulator.recommend.run import RecommendConfig
    from twinsim.simulator.recommend.run import recommend as run

    config = RecommendConfig(days=days, users=users, start=str(start) if start else None,
                             history=str(history) if history else None, observed_until=observed_until,
                             history_days=history_days, seed=seed, cohort_size=cohort_size, share=share,
                             trigger=trigger, values=values, concurrency=concurrency, timeout_s=timeout_s,
                             fallback=fallback, feedback_url=feedback_url)
    report = run(model_dir, list(policies), config, output, workers=workers or default_workers(), resume=resume,
                 overwrite=overwrite, on_progress=_labelled_progress(quiet))
    for line in report.get("summary", []):
        click.echo(f"  {line}")
    click.echo(f"report written to {output / 'report.html'} and {output / 'report.json'}")


def _parse_response(ctx, param, value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    trigger, sep, response = value.partition(":")
    if not sep or not trigger.strip() or not response.strip():
        raise click.BadParameter(f"'{value}' is not TRIGGER:RESPONSE; write e.g. offer_shown:offer_click")
    return trigger.strip(), response.strip()


@main.command()
@click.option("--train", "train", type=click.Path(path_type=Path), help="Real training users (an event log).")
@click.option("--holdout", "holdout", type=click.Path(path_type=Path),
              help="Real users the generator never saw (an event log).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Model directory: take train and holdout users of --data from its split.parquet.")
@click.option("--data", "data", type=click.Path(path_type=Path), help="The real data the model was trained on.")
@click.option("--synthetic", "synthetic", required=True, type=click.Path(path_type=Path),
              help="The synthetic event log to judge.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Directory for report.json and report.html.")
@click.option("--seed", default=0, show_default=True, help="Seed for sampling and models; same seed, same report.")
@click.option("--terminal", multiple=True,
              help="Terminal (churn) event type(s); default: the model's, or detected (always a user's last event).")
@click.option("--response", callback=_parse_response, default=None,
              help="Response task as TRIGGER:RESPONSE event types; default offer_shown:offer_click when both exist.")
@click.option("--response-hours", default=24.0, show_default=True,
              help="A response counts if it follows its trigger within this many hours.")
@click.option("--churn-days", default=30, show_default=True, help="Churn task: churn within this many days.")
@click.option("--rare-quantile", default=0.99, show_default=True,
              help="Rare events: values beyond this training quantile (0.99 = top 1 %).")
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.pass_context
def validate(ctx: click.Context, train: Path | None, holdout: Path | None, model_dir: Path | None, data: Path | None,
             synthetic: Path, output: Path, seed: int, terminal: tuple[str, ...], response: tuple[str, str] | None,
             response_hours: float, churn_days: int, rare_quantile: float, overwrite: bool, quiet: bool) -> None:
    """Judge synthetic data: fidelity, utility and privacy against real holdout users.

    Every figure is shown next to what real holdout users (never seen by the generator) reach: the ceiling.
    Writes report.json and a self-contained report.html; exits 1 if any gate fails. Give the real users
    either as --train and --holdout, or as --model and --data (the model's saved split).

    \b
    Examples:
      twinsim validate --model runs/model --data runs/world --synthetic runs/synthetic -o runs/report
      twinsim validate --train real/train --holdout real/holdout --synthetic syn -o report
    """
    import time

    from twinsim.models.artifacts import check_output_dir
    from twinsim.models.validation import ValidationConfig, run_model_validation, run_validation
    from twinsim.models.validation.report import format_summary, write_report

    if (train is None) != (holdout is None) or (model_dir is None) != (data is None) \
            or (train is None) == (model_dir is None):
        raise TwinsimError("give the real users either as --train and --holdout, or as --model and --data "
                           "(one pair, not both); e.g. --model runs/model --data runs/world")
    config = ValidationConfig(seed=seed, terminal=terminal or None, response=response, response_hours=response_hours,
                              churn_days=churn_days, rare_quantile=rare_quantile)
    config.validate()
    check_output_dir(output, overwrite)
    started = time.perf_counter()

    def progress(stage: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - started:5.1f} s] {stage}", err=True)

    if model_dir is not None:
        report = run_model_validation(model_dir, data, synthetic, config, progress=progress)
    else:
        report = run_validation(train, holdout, synthetic, config, progress=progress)
    progress("writing the report")
    write_report(report, output, overwrite)
    click.echo(format_summary(report))
    click.echo(f"report written to {output / 'report.html'} and {output / 'report.json'}")
    if not report["passed"]:
        ctx.exit(EXIT_CHECK_FAILED)


@main.command()
@click.argument("log", type=click.Path(path_type=Path))
@click.option("--cut", required=True, help="First day of the future, YYYY-MM-DD: the twin learns the events before it.")
@click.option("--horizon", "horizon", default=90, show_default=True, help="Days after the cut that are forecast.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="A model trained on the events before the cut (default: train one in OUTPUT/model).")
@click.option("--replications", default=10, show_default=True,
              help="Twin draws per customer (seeds SEED, SEED+1, ...); the forecast is their mean.")
@click.option("--seed", default=0, show_default=True, help="Seed of the first replication.")
@click.option("--epochs", default=None, type=int, help="Training epochs when backtest trains the model (default 8).")
@click.option("--cohort-size", type=int, default=None, help="Users simulated together (default: as simulate).")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Backtest directory: report.json, report.html, and every stage.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it holds another backtest.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def backtest(log: Path, cut: str, horizon: int, model_dir: Path | None, replications: int, seed: int,
             epochs: int | None, cohort_size: int, output: Path, overwrite: bool, quiet: bool) -> None:
    """Forecast a log's customers past a cut and score it against what they did, next to the baselines.

    Trains on the events before --cut (or takes --model, refused if it saw later ones), continues every
    customer from the cut --replications times, and compares with the --horizon days after it: per event
    type the total, per customer MAE / RMSE / correlation, by how active customers were before the cut,
    weekly cumulative counts and churn. Side by side: each customer's own past rate, BG/NBD and Pareto/NBD
    (the btyd extra). Rerunning the same command finishes an interrupted backtest.

    \b
    Examples:
      twinsim backtest runs/world455 --cut 2026-01-01 --horizon 90 -o runs/backtest
      twinsim backtest shop/purchases.csv --cut 2024-10-01 --horizon 90 --replications 20 -o runs/bt-shop
    """
    import time

    from twinsim.simulator.backtest.run import BacktestConfig
    from twinsim.simulator.backtest.run import backtest as run

    started = time.perf_counter()

    def say(line: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - started:6.1f} s] {line}", err=True)

    config = BacktestConfig(cut=cut, horizon_days=horizon, replications=replications, seed=seed,
                            model=str(model_dir) if model_dir else None,
                            train_options={} if epochs is None else {"epochs": epochs}, cohort_size=cohort_size)
    report = run(log, config, output, overwrite=overwrite, say=say)
    for line in report["summary"]:
        click.echo(line)
    for line in report["missing"]:
        click.echo(f"note: {line}")
    click.echo(f"report written to {output / 'report.html'} and {output / 'report.json'}")



def _parse_duration(ctx, param, value: str | None) -> float | None:
    """``90s``, ``30m``, ``2h``, ``1d`` (or plain seconds) -> seconds."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise click.BadParameter(f"{value!r} is not a duration; e.g. --for 90s, --for 30m, --for 2h")
    return seconds


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--users", type=int, default=None,
              help="Live customers to start with (default 50; with --history: the log's first N, default all).")
@click.option("--where", multiple=True, help="Condition their attributes, e.g. --where segment=student.")
@click.option("--history-days", default=365, show_default=True,
              help="Days of past each customer has before the start, written to the sinks first (in bulk).")
@click.option("--history", "history", default=None, type=click.Path(path_type=Path),
              help="Take the customers of this event log instead: their events are their past, then the model "
                   "continues the silence after the log up to the start (both written first), then live.")
@click.option("--speed", default=60.0, show_default=True,
              help="Simulated seconds per wall-clock second (1: real time, 60: a minute a second, 3600: an hour).")
@click.option("--sink", "sinks", multiple=True,
              help="Where events go (repeat for several): jsonl:- | jsonl:FILE | http://HOST:PORT/PATH | "
                   "postgresql://USER@HOST/DB?table=T | redis://HOST:PORT/0?stream=S | nats://HOST:PORT?stream=S "
                   "(docs/live.md; default: jsonl:-).")
@click.option("--template", default=None, help="A payload template: JSON text or file mapping field -> column.")
@click.option("--control", default=None,
              help="Serve the control API at HOST:PORT (e.g. 127.0.0.1:8750; docs/live.md lists its routes).")
@click.option("--control-token", default=None, envvar="TWINSIM_CONTROL_TOKEN",
              help="The control API's token (required when --control is not loopback).")
@click.option("--start", default=None, help="The simulated moment live time starts (default: now, UTC).")
@click.option("--for", "for_s", default=None, callback=_parse_duration,
              help="Stop after this much wall-clock time: 90s, 30m, 2h (default: run until stopped).")
@click.option("--until", default=None, help="Stop at this simulated date or time (e.g. 2027-01-01).")
@click.option("--seed", default=0, show_default=True, help="Seed of every customer's random streams.")
@click.option("--state", "state", default=None, type=click.Path(path_type=Path),
              help="Keep the run's state here; started again with the same options it continues where it stopped.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def live(model_dir: Path, users: int | None, where: tuple[str, ...], history_days: int, history: Path | None,
         speed: float,
         sinks: tuple[str, ...], template: str | None, control: str | None, control_token: str | None,
         start: str | None, for_s: float | None, until: str | None, seed: int, state: Path | None,
         quiet: bool) -> None:
    """Live dynamic test users: customers with a past and a future that keeps arriving, streamed into sinks.

    Each customer's --history-days of past go to the sinks first; then their events are emitted as their
    simulated time comes, at --speed (timestamps are current: live time starts now, or at --start). With
    --control the system under test can act back: impose an event (an offer shown, "salary now") after
    which the customer's future is drawn given it, add customers, pause, change speed, jump ahead.
    Progress and per-sink counters go to stderr; docs/live.md is the guide.

    \b
    Examples:
      twinsim live runs/model --users 50 --speed 60 --sink jsonl:- --for 2m
      twinsim live runs/model --users 50 --history-days 365 --speed 60 \
          --sink postgresql://postgres@127.0.0.1/test?table=twinsim_events \
          --sink http://127.0.0.1:9000/events --control 127.0.0.1:8750 --state runs/live-state
    """
    import contextlib

    from twinsim.models.generate import parse_where
    from twinsim.simulator.live import control as control_api
    from twinsim.simulator.live.engine import LiveConfig, LiveRun
    from twinsim.simulator.live.sinks import open_sinks

    if users is None and history is None:
        users = 50
    config = LiveConfig(users=users, where=parse_where(where), history_days=history_days,
                        history=str(history) if history else None, speed=speed, start=start, seed=seed)
    config.validate()
    bind = control_api.parse_bind(control) if control else None
    run = LiveRun(model_dir, config, [], state=state)
    columns = ["event_id", "user_id", "timestamp", "event_type", "amount", *run.schema.marks]
    opened = open_sinks(sinks or ["jsonl:-"], template, columns=columns)
    run.sinks = opened

    def progress(s: dict) -> None:
        if quiet:
            return
        per_sink = "; ".join(f"{k['sink']} acked {k['acknowledged']:,} retried {k['retried']:,} failed "
                             f"{k['failed']:,} pending {k['pending']:,} lag p99 "
                             f"{'-' if k['lag_p99_s'] is None else format(k['lag_p99_s'] * 1000, '.0f') + ' ms'}"
                             for k in s["sinks"])
        late = "-" if s["lateness_p99_s"] is None else f"{s['lateness_p99_s'] * 1000:.0f} ms"
        click.echo(f"{s['now'][:19]}Z  {s['speed']:g}x  {s['active']}/{s['customers']} customers  emitted "
                   f"{s['emitted']:,} (history {s['history']:,})  lateness p99 {late}  | {per_sink}", err=True)

    run.on_progress = progress
    try:
        if not quiet:
            click.echo(f"replaying {history} and continuing it to the start ..." if history else
                       f"sampling {users} customers' {history_days} days of history ...", err=True)
        history = run.backfill()
        if not quiet:
            click.echo(f"history: {history:,} events written to {', '.join(s.name for s in opened)}", err=True)
        with contextlib.ExitStack() as stack:
            if bind is not None:
                base = stack.enter_context(control_api.serve(run, *bind, token=control_token))
                click.echo(f"control API at {base} (GET /customers, POST /customers/ID/events, /metrics)", err=True)
            try:
                summary = run.run(for_s=for_s, until=until)
            except KeyboardInterrupt:
                summary = run.summary()
                click.echo("stopped (Ctrl-C)", err=True)
        progress(summary)
    finally:
        for sink in opened:
            sink.close(30.0)


if __name__ == "__main__":
    main()
