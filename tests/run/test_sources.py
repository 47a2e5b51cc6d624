"""Naming a transformers source: the forms accepted, what is refused (exit 2), and how it is described."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.errors import UserError
from bench.run.sources import checkout_commit, resolve


def _package(root):
    (root / "transformers").mkdir(parents=True)
    (root / "transformers" / "__init__.py").write_text("__version__ = '0'\n")
    return root


def test_checkout_puts_src_on_the_path_and_records_its_commit(tmp_path):
    repo = tmp_path / "tf"
    _package(repo / "src")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    source = resolve(str(repo), "BASE")
    assert (source.kind, source.path, source.python) == ("checkout", str(repo / "src"), sys.executable)
    described = source.describe()
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert described["commit"] == {"sha": sha, "dirty": False, "branch": described["commit"]["branch"]}
    (repo / "src" / "transformers" / "__init__.py").write_text("__version__ = '1'\n")
    assert resolve(str(repo), "BASE").describe()["commit"]["dirty"] is True


def test_a_directory_inside_another_repository_has_no_commit_of_its_own(tmp_path):
    subprocess.run(["git", "-C", str(tmp_path), "init", "-q"], check=True)
    inner = _package(tmp_path / "inner")
    assert checkout_commit(inner) is None
    assert resolve(str(inner), "NEW").describe()["commit"] is None


def test_unpacked_wheel_gives_its_version(tmp_path):
    root = _package(tmp_path / "w")
    (root / "transformers-5.23.0.dist-info").mkdir()
    source = resolve(str(root), "NEW")
    assert source.kind == "wheel"
    assert source.describe()["version"] == "5.23.0"
    assert source.environ()["PYTHONPATH"].split(":")[1] == str(root)


def test_virtual_environment_directory_and_python(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    for given in (venv, python):
        source = resolve(str(given), "BASE")
        assert (source.kind, source.python, source.path) == ("environment", str(python), None)
        # Only tfbench goes on its path: nothing of this environment's packages.
        assert len(source.environ()["PYTHONPATH"].split(":")) == 1


@pytest.mark.parametrize(
    "make, said",
    [
        (lambda p: p / "missing", "no such file or directory"),
        (lambda p: p, "holds no transformers"),
        (lambda p: (p / "f.txt", (p / "f.txt").write_text(""))[0], "not an executable python"),
    ],
)
def test_refused_with_the_forms_allowed(tmp_path, make, said):
    with pytest.raises(UserError) as info:
        resolve(str(make(tmp_path)), "BASE")
    assert said in str(info.value) and "BASE" in str(info.value)
    assert "checkout" in str(info.value)  # the allowed forms are named
