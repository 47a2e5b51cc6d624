"""A transformers source to measure, as a person names it: a checkout, an unpacked wheel, or the
python of another environment. Resolved and checked before anything runs (a wrong path exits 2),
and described for run.json: the checkout's commit and whether its tree is dirty, or the wheel's
version.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench
from bench.errors import UserError

FORMS = (
    "a transformers checkout (holding src/transformers), an unpacked wheel or other directory "
    "holding transformers/, a virtual environment's directory, or the python executable of "
    "another environment"
)

_CODE_DIR: Path | None = None


def code_dir() -> Path:
    """A directory holding only tfbench's package (a link to it), to put on a side's import path.

    The directory that holds `bench` may hold much else (the image's site-packages): on another
    environment's path it would shadow that environment's own packages.
    """
    global _CODE_DIR
    if _CODE_DIR is None:
        path = Path(tempfile.mkdtemp(prefix="tfbench-code-"))
        (path / "bench").symlink_to(Path(bench.__file__).resolve().parent, target_is_directory=True)
        atexit.register(shutil.rmtree, path, True)
        _CODE_DIR = path
    return _CODE_DIR


def _git(path: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            # safe.directory: a checkout mounted read-only is often owned by another uid, and
            # reading its commit is all this does.
            ["git", "-c", "safe.directory=*", "-C", str(path), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def checkout_commit(path: Path) -> dict[str, Any] | None:
    """The commit of a git checkout and whether tracked files differ from it; None outside git."""
    top = _git(path, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != path.resolve():
        return None  # not a checkout of its own (a directory inside some other repository)
    sha = _git(path, "rev-parse", "HEAD")
    if not sha:
        return None
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    branch = _git(path, "rev-parse", "--abbrev-ref", "HEAD")
    return {
        "sha": sha,
        "dirty": None if status is None else bool(status),
        "branch": branch if branch and branch != "HEAD" else None,
    }


def wheel_version(path: Path) -> str | None:
    """The version an unpacked wheel's metadata directory names (transformers-5.23.0.dist-info)."""
    for info in sorted(path.glob("transformers-*.dist-info")):
        return info.name[len("transformers-") : -len(".dist-info")]
    return None


@dataclass(frozen=True)
class Source:
    """Where a side's transformers comes from, and the interpreter that imports it."""

    given: str  # as the person wrote it
    label: str  # what named it: BASE, NEW, transformers_source
    kind: str  # checkout, wheel, directory, environment
    python: str  # the interpreter of the side server and its workers
    path: str | None = None  # a directory put first on the import path (None: the environment's own)

    @property
    def python_label(self) -> str:
        return "this image's python" if self.python == sys.executable else self.python

    def environ(self) -> dict[str, str]:
        """The side server's environment: this one, with only tfbench and the source on the path."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(code_dir()), *([self.path] if self.path else [])])
        return env

    def describe(self) -> dict[str, Any]:
        """For run.json and the run's identity."""
        out: dict[str, Any] = {"given": self.given, "kind": self.kind, "python": self.python}
        if self.path is not None:
            out["path"] = self.path
            root = Path(self.path).parent if self.kind == "checkout" else Path(self.path)
            if self.kind == "wheel":
                out["version"] = wheel_version(root)
            else:
                out["commit"] = checkout_commit(root)
        return out


def resolve(given: str, label: str) -> Source:
    """The source a person named; exit 2 naming what is wrong before anything starts."""
    if not given:
        raise UserError(f"{label}: empty; give {FORMS}")
    path = Path(given).expanduser()
    if not path.exists():
        raise UserError(f"{label} {given!r}: no such file or directory; give {FORMS}")
    if path.is_dir():
        path = path.resolve()
        if (path / "src" / "transformers" / "__init__.py").is_file():
            return Source(given, label, "checkout", sys.executable, str(path / "src"))
        if (path / "transformers" / "__init__.py").is_file():
            kind = "wheel" if wheel_version(path) else "directory"
            return Source(given, label, kind, sys.executable, str(path))
        venv_python = path / "bin" / "python"
        if (path / "pyvenv.cfg").is_file() and os.access(venv_python, os.X_OK):
            return Source(given, label, "environment", str(venv_python))
        raise UserError(
            f"{label} {given!r}: holds no transformers (looked for src/transformers/__init__.py, "
            f"transformers/__init__.py and a virtual environment's bin/python); give {FORMS}"
        )
    if not os.access(path, os.X_OK):
        raise UserError(f"{label} {given!r}: a file, but not an executable python; give {FORMS}")
    return Source(given, label, "environment", str(path.absolute()))
