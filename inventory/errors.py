"""The one error type for bad user input: it names the file and the field."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input in a file the user gave us; the CLI prints it and exits with code 2."""

    def __init__(self, file: str | None, field: str | None, message: str):
        self.file = file
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        return f"{where}: {self.message}" if where else self.message
