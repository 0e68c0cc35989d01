"""Errors a user can fix. The CLI prints them as a short message (a traceback only with --debug)."""

from __future__ import annotations


class TwinsimError(Exception):
    """Base class for errors caused by input or options, not by a bug in twinsim."""


class DataContractError(TwinsimError):
    """Input data breaks the event-log contract (see docs/data-contract.md).

    The message names the problem, the file, the column, an example offending row and the fix.
    """

    def __init__(
        self,
        problem: str,
        *,
        fix: str,
        file: str | None = None,
        column: str | None = None,
        example: str | None = None,
    ) -> None:
        self.problem, self.fix = problem, fix
        self.file, self.column, self.example = file, column, example
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [self.problem]
        for label, value in (("file", self.file), ("column", self.column), ("example", self.example)):
            if value is not None:
                lines.append(f"  {label + ':':<9}{value}")
        lines.append(f"  {'fix:':<9}{self.fix}")
        return "\n".join(lines)


class OutputExistsError(TwinsimError):
    """The output directory already holds something and --overwrite was not given."""
