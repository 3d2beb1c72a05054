"""Errors of the Dockerfile front end, each naming FILE:LINE:COL."""

from __future__ import annotations


class DockerfileError(Exception):
    """A mistake in a Dockerfile: what is wrong and where (1-based line and column; 0 = unknown)."""

    user_facing = True

    def __init__(self, message: str, file: str = "Dockerfile", line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col

    def located(self, file: str | None = None, line: int | None = None, col: int | None = None) -> "DockerfileError":
        """The same error with a location filled in where it had none."""
        return type(self)(
            self.message,
            file if file is not None else self.file,
            self.line or (line or 0),
            self.col or (col or 0),
        )

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}"
            if self.col:
                where += f":{self.col}"
        return f"{where}: {self.message}"


class ExpansionError(DockerfileError):
    """A variable expansion failed (`${x:?msg}`, a bad substitution, an unterminated quote)."""
