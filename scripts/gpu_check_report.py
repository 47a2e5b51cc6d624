"""Checks and the closing table of scripts/gpu_check.sh, read from the run's result files.

Usage: python scripts/gpu_check_report.py <run dir>. Exit 0 when every check passes, 1 otherwise.
Checks per measured cell: the cell is ok; device-event and host timings of each call agree within
2% (median over runs); the first timed run is not an outlier (warm-up absorbed compilation);
energy per token is positive; decode MBU lies in (0, 1].
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

AGREE = 0.02


def _get(record: dict[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def check(record: dict[str, Any]) -> list[str]:
    if record["status"] != "ok":
        return [f"status {record['status']}: {record.get('reason')}"]
    problems = []
    gaps = [
        abs(r["e2e_latency_device"] - r["e2e_latency"]) / r["e2e_latency"]
        for r in record.get("runs", [])
        if r.get("e2e_latency_device") is not None and r.get("e2e_latency")
    ]
    if not gaps:
        problems.append("no device-event timing recorded")
    elif statistics.median(gaps) > AGREE:
        problems.append(f"device events and host clock differ by {statistics.median(gaps):.1%} (median)")
    if _get(record, "warmup_check", "suspect"):
        problems.append(
            f"first timed run {_get(record, 'warmup_check', 'first_over_median'):.2f}x the median"
        )
    energy = _get(record, "gpu_telemetry", "energy_per_token_j", "p50")
    if not energy or energy <= 0:
        problems.append(f"no positive energy per token ({_get(record, 'gpu_telemetry', 'reason')})")
    mbu = _get(record, "roofline", "decode_mbu")
    if mbu is None or not 0 < mbu <= 1:
        problems.append(f"decode MBU {mbu} not in (0, 1] ({_get(record, 'roofline', 'reason')})")
    return problems


def fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def main(run_dir: Path) -> int:
    records = [json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))]
    records.sort(key=lambda r: r["cell"]["index"])
    measured = [r for r in records if r["status"] != "skipped"]
    failed = 0
    print(
        "| cell | shape | e2e p50 ms | ttft p50 ms | tpot p50 ms | tok/s | J/token | MBU | MFU | util % | W | check |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in measured:
        c = r["cell"]
        problems = check(r)
        failed += bool(problems)
        dev = (_get(r, "gpu_telemetry", "devices") or [{}])[0]
        print(
            f"| {c['attn_implementation']}{'+compile' if c['compile'] else ''} "
            f"| b{c['batch_size']} s{c['sequence_length']} n{c['num_tokens_to_generate']} "
            f"| {fmt(_get(r, 'stats', 'e2e_latency', 'p50'), 1e3)} "
            f"| {fmt(_get(r, 'stats', 'ttft', 'p50'), 1e3)} "
            f"| {fmt(_get(r, 'stats', 'tpot', 'p50'), 1e3, 3)} "
            f"| {fmt(_get(r, 'stats', 'e2e_throughput', 'p50'), 1, 0)} "
            f"| {fmt(_get(r, 'gpu_telemetry', 'energy_per_token_j', 'p50'), 1, 4)} "
            f"| {fmt(_get(r, 'roofline', 'decode_mbu'), 1, 3)} "
            f"| {fmt(_get(r, 'roofline', 'prefill_mfu'), 1, 3)} "
            f"| {fmt(_get(dev, 'metrics', 'gpu_util_pct', 'mean'), 1, 0)} "
            f"| {fmt(_get(dev, 'metrics', 'power_w', 'mean'), 1, 0)} "
            f"| {'ok' if not problems else '; '.join(problems)} |"
        )
    skipped = len(records) - len(measured)
    print(f"\n{len(measured)} cells measured, {skipped} skipped, {failed} failed a check")
    return 1 if failed or not measured else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
