"""User-facing errors.

Anything a user can fix (a bad file, a bad config key, an unknown model) is raised as a
`TunelabError`; the CLI prints its one-line message and exits with code 2, without a traceback
unless `--debug` is given. Library callers can catch it like any exception.

`kind` is a short id of what went wrong ("invalid_json", "missing_field", …), set where the error is
raised, so a report can group problems without reading their messages.
"""

from __future__ import annotations


class TunelabError(Exception):
    """An error caused by user input, with where it happened and what was expected."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        self.expected = expected
        self.kind = kind
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        expected = f" (expected {self.expected})" if self.expected else ""
        return f"{where}{field}{self.message}{expected}"
