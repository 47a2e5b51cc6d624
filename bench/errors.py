"""User-facing errors: anything a person can get wrong exits 2 with a message, no traceback."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CELL_FAILED = 1
EXIT_USAGE = 2
EXIT_PUSH_FAILED = 3  # the run's results are complete locally; the upload failed
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class UserError(Exception):
    """A mistake in a config, a flag, an environment variable or the environment.

    The message is printed as is and the process exits with EXIT_USAGE.
    """

    exit_code = EXIT_USAGE


class ConfigError(UserError):
    """One or more invalid config values; each problem names its source, field, value and what is allowed."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        head = f"invalid config ({source})" if source else "invalid config"
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{head}:\n{body}")


class ConfigNotFoundError(UserError):
    """No config where one was asked for (a mount forgotten, a path mistyped)."""
