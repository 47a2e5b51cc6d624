"""A results volume that fills up or turns read-only while a run is under way: the run stops in
order with exit 4 and a message that says what to do, every file on the volume stays whole, and
the same command continues the run once the volume is writable again, without measuring a
finished cell twice and without charging the interrupted cell an attempt.

The volume is a real tmpfs mounted for each test (root only: CI runs as root)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import cells_by_id, plan_cells, run_entrypoint, start_entrypoint, write_config

# Four cells of the sleep model, about half a second each: long enough to act between two cells.
SLOW = {
    "model": "synthetic:sleep",
    "attn_implementation": "eager",
    "model_config": {"prefill_sleep_s": 0.03, "decode_sleep_s": 0.03},
    "measurement_iterations": 2,
    "batch_size": [1, 2, 3, 4],
    "max_attempts": 1,  # an attempt charged for the volume's fault would leave a cell failed
}
MS_RDONLY, MS_REMOUNT = 1, 32
_LIBC = ctypes.CDLL(None, use_errno=True)


def _remount(path: Path, read_only: bool) -> int:
    """mount(2) directly: a few microseconds a call, so a loop can catch a short quiet moment."""
    flags = MS_REMOUNT | (MS_RDONLY if read_only else 0)
    if _LIBC.mount(b"tmpfs", os.fsencode(path), b"tmpfs", flags, None) == 0:
        return 0
    return ctypes.get_errno()


@pytest.fixture
def volume(tmp_path: Path):
    mnt = tmp_path / "volume"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        reason = f"cannot mount a tmpfs (root needed): {proc.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        _remount(mnt, read_only=False)
        subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True)


def _wait_for_ok(output: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """The run directory, once a cell has finished ok in it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[1]
        for run in output.iterdir() if output.exists() else []:
            for path in (run / "cells").glob("*.json") if (run / "cells").is_dir() else []:
                try:
                    if json.loads(path.read_text())["status"] == "ok":
                        return run
                except (OSError, ValueError):
                    pass
        time.sleep(0.02)
    raise AssertionError("no cell finished in time")


def _fill(path: Path) -> None:
    """Write zeros until the volume has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)


def _make_read_only(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Remount read-only at the first moment the kernel allows it: no file on the volume open for
    writing, which is between two cells (the runner holds the cell's log while its worker runs)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        code = _remount(path, read_only=True)
        if code == 0:
            return
        assert code == errno.EBUSY, os.strerror(code)
        time.sleep(0.0002)
    raise AssertionError("the volume never became quiet enough to remount read-only")


def _whole(run: Path) -> dict[str, dict]:
    """Every result file parses (old or new, never half); the cell records, by cell id."""
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] in ("running", "interrupted"), meta["status"]
    records = cells_by_id(run)
    for cid, rec in records.items():
        assert rec["cell_id"] == cid
    assert not [p for p in (run / "cells").iterdir() if p.suffix != ".json"]
    return records


def _continued(config: Path, output: Path, run: Path, cells: list[str], before: dict[str, dict]) -> dict:
    """Restart with the same config and volume: the run finishes, every cell ok exactly once."""
    again = run_entrypoint(config, output)
    assert again.returncode == 0, again.stderr
    assert "continues" in again.stderr
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == [run.name]
    after = cells_by_id(run)
    assert sorted(after) == sorted(cells)
    for cid, rec in after.items():
        assert rec["status"] == "ok", rec
        # Nothing was charged: an attempt cut short by the volume is at most "interrupted".
        assert {a["status"] for a in rec["attempts"]} <= {"interrupted"}, rec["attempts"]
        if before.get(cid, {}).get("status") == "ok":  # finished before the fault: not measured again
            assert rec["attempt"] == 1 and rec["worker_pid"] == before[cid]["worker_pid"]
            assert rec["started_at"] == before[cid]["started_at"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["counts"] == {"ok": len(cells), "not_run": 0}
    rows = [json.loads(line)["cell_id"] for line in (run / "summary.jsonl").read_text().splitlines()]
    assert rows == cells
    assert not list(run.rglob("*.tmp")) and not (run / "work").exists()
    return after


def _the_interrupted_cell(before: dict[str, dict], after: dict[str, dict]) -> None:
    """The cell under way when the volume failed: no record (its first attempt left nothing), or
    one that is not charged; after the restart it ran once more, to ok."""
    unfinished = {cid: rec for cid, rec in before.items() if rec["status"] != "ok"}
    assert len(unfinished) <= 1, unfinished
    for cid, rec in unfinished.items():
        assert rec["status"] in ("interrupted", "running"), rec
        if rec["status"] == "interrupted":
            assert "results volume failed" in rec["reason"]
        assert after[cid]["attempt"] == rec["attempt"] + 1


def test_full_volume_mid_run_exits_4_and_the_same_command_continues(tmp_path, volume):
    config = write_config(tmp_path, **SLOW)
    cells = [c["cell_id"] for c in plan_cells(config)]
    output = volume / "results"
    proc = start_entrypoint(config, output)
    run = _wait_for_ok(output, proc)
    _fill(volume / "filler")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 4, stderr
    assert "No space left on device" in stderr and str(volume) in stderr
    assert "results written so far are intact" in stderr and "start again with the same config" in stderr
    assert "Traceback" not in stderr
    before = _whole(run)
    assert 1 <= sum(r["status"] == "ok" for r in before.values()) < len(cells)
    assert not list(run.rglob("*.tmp"))  # a write cut short by ENOSPC removes its temporary
    (volume / "filler").unlink()
    after = _continued(config, output, run, cells, before)
    _the_interrupted_cell(before, after)


def test_read_only_volume_mid_run_exits_4_and_the_same_command_continues(tmp_path, volume):
    config = write_config(tmp_path, **SLOW)
    cells = [c["cell_id"] for c in plan_cells(config)]
    output = volume / "results"
    proc = start_entrypoint(config, output)
    run = _wait_for_ok(output, proc)
    _make_read_only(volume, proc)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 4, stderr
    assert "Read-only file system" in stderr and str(volume) in stderr
    assert "results written so far are intact" in stderr
    assert "Traceback" not in stderr
    before = _whole(run)
    assert 1 <= sum(r["status"] == "ok" for r in before.values()) < len(cells)
    assert _remount(volume, read_only=False) == 0
    after = _continued(config, output, run, cells, before)
    _the_interrupted_cell(before, after)


def test_read_only_volume_at_start_exits_2_and_creates_nothing(tmp_path, volume):
    config = write_config(tmp_path)
    output = volume / "results"
    output.mkdir()
    assert _remount(volume, read_only=True) == 0
    proc = run_entrypoint(config, output)
    assert proc.returncode == 2, proc.stderr
    assert f"output directory {output} is not writable: Read-only file system" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(output.iterdir()) == []


def test_bad_run_id_creates_nothing(tmp_path):
    config = write_config(tmp_path)
    proc = run_entrypoint(config, tmp_path / "out", "--run-id", "no spaces allowed")
    assert proc.returncode == 2 and "--run-id" in proc.stderr
    assert not (tmp_path / "out").exists()
