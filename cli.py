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

from models.errors import TwinsimError

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
def reference_world(users: int, days: int, start: date, seed: int, output: Path, overwrite: bool,
                    quiet: bool) -> None:
    """Generate the reference bank world: events + users in the data contract.

    An agent-based stand-in for a bank's private event log (logins, income, card payments, offers and
    responses, life-stage chains, a macro downturn, churn). Its laws are in docs/reference-world.md.
    Writes events.parquet, users.parquet, context.parquet and world.json.

    \b
    Example:
      twinsim reference-world --users 5000 --days 365 --seed 7 -o runs/world
    """
    from simulator.reference_world import WorldConfig, generate_reference_world

    config = WorldConfig(users=users, days=days, start=start, seed=seed)
    config.validate()
    with click.progressbar(length=users * days, label="simulating user-days", file=sys.stderr,
                           hidden=quiet) as bar:
        manifest = generate_reference_world(config, output, overwrite=overwrite, progress=bar.update)
    counts, timing = manifest["counts"], manifest["timing"]
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
    from models.event_log import load_event_log
    from models.summary import format_summary, summarize

    log = load_event_log(path, users)
    for note in log.notes:
        click.secho(f"warning: {note}", fg="yellow", err=True)
    summary = summarize(log)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


if __name__ == "__main__":
    main()
