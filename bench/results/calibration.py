"""calibration.json: what `tfbench calibrate` learned of a machine's drift, per hardware label and
metric, kept beside the runs it came from (<output>/calibration.json) so that `tfbench compare`
and `tfbench history` find it for runs in the same output directory.

    {"hardware": {"<label>": {"measured_at": ..., "runs": [run ids], "tfbench_version": ...,
                              "metrics": {"tpot": {"run_var": ..., "cell_var": ..., "df": ...,
                                                   "process_var": ..., "process_df": ..., "cells": ...}}}}}

Variances are of log values (a run_var of 0.0009 is a 3% standard deviation between runs).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench.results.records import describe_error
from bench.results.store import RunFileError, atomic_write_json, read_json

FILE_NAME = "calibration.json"


class MetricDrift(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_var: float = Field(ge=0)
    cell_var: float = Field(default=0.0, ge=0)
    df: float = Field(gt=0)
    process_var: float | None = Field(default=None, ge=0)
    process_df: float = 0
    cells: int = 0


class HardwareCalibration(BaseModel):
    model_config = ConfigDict(extra="allow")

    measured_at: str | None = None
    runs: list[str] = Field(default_factory=list)
    tfbench_version: str | None = None
    metrics: dict[str, MetricDrift] = Field(default_factory=dict)


class Calibration(BaseModel):
    model_config = ConfigDict(extra="allow")

    hardware: dict[str, HardwareCalibration] = Field(default_factory=dict)


def load(path: Path) -> Calibration:
    """A calibration file; RunFileError (exit 2) naming the file and field when it is not one."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise RunFileError(
            f"{path} cannot be read as a calibration: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        raise RunFileError(describe_error(exc, f"{path} is not a tfbench calibration")) from None


def find(paths: Iterable[Path]) -> tuple[Path, Calibration] | None:
    """The first calibration.json among these files or the directories holding them."""
    for candidate in paths:
        path = candidate / FILE_NAME if candidate.is_dir() else candidate
        if path.is_file():
            return path, load(path)
    return None


def find_entry(paths: Iterable[Path], hardware: str) -> tuple[Path, HardwareCalibration] | None:
    """The calibration of `hardware` in the first calibration.json among these paths, if it has one."""
    found = find(paths)
    if found is None or hardware not in found[1].hardware:
        return None
    return found[0], found[1].hardware[hardware]


def save(path: Path, hardware: str, entry: dict[str, Any]) -> Calibration:
    """Add (or replace) one hardware's calibration in the file, keeping the others."""
    existing = load(path) if path.is_file() else Calibration()
    existing.hardware[hardware] = HardwareCalibration.model_validate(entry)
    atomic_write_json(path, existing.model_dump(mode="json"))
    return existing
