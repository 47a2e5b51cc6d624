"""User-facing errors: anything a person can get wrong exits 2 with a message, no traceback;
a results volume that cannot be written exits 4."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CELL_FAILED = 1
EXIT_USAGE = 2
EXIT_PUSH_FAILED = 3  # the run's results are complete locally; the upload failed
EXIT_STORAGE = 4  # the results volume could not be written (full, read-only, gone)
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


class StorageError(Exception):
    """A write to the results volume failed: the disk is full, read-only, or gone.

    Not a user's mistake and not a cell's failure: what was written before is intact, and the
    same command continues once the volume is writable again. Exits EXIT_STORAGE, no traceback.
    """

    exit_code = EXIT_STORAGE

    def __init__(self, path: object, error: OSError, advice: str | None = None):
        self.path = str(path)
        self.error = error
        self.reason = error.strerror or str(error)  # "No space left on device", "Read-only file system"
        self.advice = advice or "Free space or make the volume writable, then try again."
        super().__init__(f"cannot write {self.path}: {self.reason}. {self.advice}")

    def with_advice(self, advice: str) -> StorageError:
        return StorageError(self.path, self.error, advice)
