"""User-facing errors.

Anything a user can cause (a bad file, a bad override, a missing model directory) raises a
``FinegrainedError``. The command-line entry point prints it as one line per problem and exits with
status 2, without a traceback. Bugs stay ordinary exceptions so that they do show a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_USER_ERROR = 2


class FinegrainedError(Exception):
    """An error the user can fix; printed without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One problem found in an input file, printed as ``FILE:LINE: field: message``."""

    file: str
    line: int | None
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = self.message if self.field is None else f"{self.field}: {self.message}"
        return f"{where}: {what}"


class InputError(FinegrainedError):
    """One or more problems in a user's input file(s)."""

    def __init__(self, problems: list[Problem] | Problem | str, file: str | Path | None = None):
        if isinstance(problems, str):
            problems = [Problem(str(file) if file is not None else "<input>", None, problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
