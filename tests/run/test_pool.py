"""The GPU pool: core shares on fake topologies, how many cells run at once, slots that never share a
GPU, and the runner's scheduler over a fake worker (no processes: fast)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench.run.runner as runner_module
from bench.config.schema import BenchConfig
from bench.plan.matrix import Capabilities, build_plan
from bench.results.records import RunMeta, Settings
from bench.results.store import RunDir, atomic_write_json
from bench.run.machine import GpuInfo, detect_accelerators
from bench.run.pool import (
    MIN_CORES_PER_CELL,
    Pool,
    Topology,
    build_pool,
    core_shares,
    parse_cpulist,
    resolve_concurrency,
)
from bench.run.runner import Runner
from bench.run.workers import Ended, now_iso
from tests.fake_nvml import simulated

TWO_NODES = Topology(tuple(range(16)), {0: frozenset(range(8)), 1: frozenset(range(8, 16))})


def gpus(n: int, numa: list[int | None] | None = None, names: list[str] | None = None) -> list[GpuInfo]:
    numa = numa or [None] * n
    names = names or ["H100"] * n
    return [GpuInfo(i, names[i], 80 << 30, f"GPU-{i:08x}", None, numa[i]) for i in range(n)]


def test_cpulists_read_as_linux_writes_them():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("") == []


def test_each_share_takes_cores_of_its_gpus_numa_node():
    shares = core_shares(4, TWO_NODES, [0, 0, 1, 1])
    assert [s.numa_node for s in shares] == [0, 0, 1, 1]
    assert [s.cpus for s in shares] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]
    # GPUs listed against the nodes' order still get their own node's cores.
    shares = core_shares(2, TWO_NODES, [1, 0])
    assert shares[0].cpus == tuple(range(8, 16)) and shares[1].cpus == tuple(range(8))


def test_shares_are_disjoint_equal_and_within_the_allowed_cores():
    # A container limited to 6 cores, 4 of them on node 1; 3 GPUs, all on node 1.
    topo = Topology((2, 3, 8, 9, 10, 11), TWO_NODES.nodes)
    shares = core_shares(3, topo, [1, 1, 1])
    cpus = [c for s in shares for c in s.cpus]
    assert len(cpus) == len(set(cpus)) == 6 and set(cpus) <= set(topo.allowed)
    assert {len(s.cpus) for s in shares} == {2}
    assert [s.numa_node for s in shares] == [1, 1, 0]  # node 1 has cores for two shares only
    # An uneven split leaves the rest unused: every cell measures with as many cores.
    assert [len(s.cpus) for s in core_shares(4, Topology(tuple(range(6))), [])] == [1, 1, 1, 1]


def test_no_numa_information_still_splits_the_cores():
    shares = core_shares(2, Topology((0, 1, 2, 3)), [None, None])
    assert [s.cpus for s in shares] == [(0, 1), (2, 3)] and {s.numa_node for s in shares} == {None}


def test_more_cells_than_cores_share_cores_round_the_cores():
    shares = core_shares(4, Topology((0, 1)), [])
    assert [s.cpus for s in shares] == [(0,), (1,), (0,), (1,)]


def test_how_many_cells_run_at_once():
    assert resolve_concurrency("auto", "cpu", 0, 64)[0] == 1  # CPU cells would measure each other
    assert resolve_concurrency(3, "cpu", 0, 2)[0] == 2  # at most one cell per core
    assert resolve_concurrency("auto", "cuda", 8, 64)[0] == 8
    # Not enough host cores for every GPU: fewer cells.
    assert resolve_concurrency("auto", "cuda", 8, 6)[0] == 6 // MIN_CORES_PER_CELL
    assert resolve_concurrency("auto", "cuda", 8, 1)[0] == 1
    assert resolve_concurrency(2, "cuda", 8, 64)[0] == 2
    assert resolve_concurrency(16, "cuda", 8, 64)[0] == 8  # never more than the GPU sets
    assert resolve_concurrency(8, "cuda", 8, 2)[0] == 8  # asked outright: more cells than cores


def test_slots_never_share_a_gpu_or_a_core_and_prefer_the_numa_node():
    g = gpus(4, [0, 0, 1, 1])
    pool = Pool(g, core_shares(4, TWO_NODES, [0, 0, 1, 1]), 4, pin=True)
    slots = [pool.acquire(1) for _ in range(4)]
    assert pool.acquire(1) is None
    assert all(s is not None for s in slots)
    assert len({s.gpus[0].uuid for s in slots}) == 4
    assert all(s.numa_node == s.gpus[0].numa_node for s in slots)
    assert all(set(s.cpus) <= TWO_NODES.nodes[s.numa_node] for s in slots)
    pool.release(slots[2])  # a GPU on node 1 and a share of node 1 come back together
    again = pool.acquire(1)
    assert again.gpus == slots[2].gpus and again.cpus == slots[2].cpus
    assert again.cuda_visible_devices == slots[2].gpus[0].uuid


def test_a_cell_of_two_gpus_waits_for_two_free_ones():
    pool = Pool(gpus(3), [], 3, pin=False)
    one = pool.acquire(1)
    two = pool.acquire(2)
    assert two is not None and len(two.gpus) == 2 and one.gpus[0] not in two.gpus
    assert pool.acquire(1) is None
    pool.release(one)
    assert pool.acquire(2) is None and pool.acquire(1) is not None
    assert two.cuda_visible_devices == f"{two.gpus[0].uuid},{two.gpus[1].uuid}"


def test_one_run_measures_one_gpu_model():
    mixed = gpus(4, names=["A100", "H100", "A100", "H100"])
    pool, meta, warnings = build_pool("auto", "cuda", mixed, [1], TWO_NODES)
    assert [g.name for g in pool.gpus] == ["A100", "A100"] and meta["used"] == 2
    assert any("another model" in w for w in warnings)


def test_cpu_cells_run_one_at_a_time_unless_asked_and_then_with_a_warning():
    pool, meta, warnings = build_pool("auto", "cpu", gpus(2), [0], TWO_NODES)
    assert pool.size == 1 and not pool.pin and not warnings and pool.acquire(0).gpus == ()
    pool, meta, warnings = build_pool(2, "cpu", [], [0], TWO_NODES)
    assert pool.size == 2 and meta["core_shares"] and any("not those of a cell alone" in w for w in warnings)


def test_the_parent_finds_gpus_and_their_numa_nodes_through_nvml():
    accel = detect_accelerators({}, nvml=simulated(4, numa=[0, 0, 1, 1]))
    assert accel.cuda and [g.numa_node for g in accel.gpus] == [0, 0, 1, 1]
    assert len({g.uuid for g in accel.gpus}) == 4
    # A CUDA_VISIBLE_DEVICES of the parent still limits what the pool may hand out.
    accel = detect_accelerators({"CUDA_VISIBLE_DEVICES": "1,3"}, nvml=simulated(4))
    assert [g.index for g in accel.gpus] == [1, 3]


# -- the scheduler, over a fake worker ---------------------------------------------------------


class FakeWorkers:
    """Workers that write a result after `seconds`, recording when each ran and where."""

    description = None

    def __init__(self, seconds: float = 0.15, fail: set[tuple[int, int]] | None = None):
        self.seconds = seconds
        self.fail = fail or set()
        self.ran: list[dict] = []
        self.lock = threading.Lock()

    def start(self, stop):
        return True

    def run(self, task, name, timeout_s, stopping, on_phase):
        t0, started = time.perf_counter(), now_iso()
        time.sleep(self.seconds)
        batch = task.cell["batch_size"]
        with self.lock:
            self.ran.append(
                {
                    "batch": batch,
                    "process": task.process,
                    "t0": t0,
                    "t1": time.perf_counter(),
                    "gpus": task.cuda_visible_devices,
                }
            )
        if (batch, task.process) in self.fail:
            atomic_write_json(
                task.result_path, {"status": "failed", "error": {"type": "RuntimeError", "message": "x"}}
            )
        else:
            run = {"e2e_latency": 0.1, "ttft": 0.02, "tpot": 0.01, "process": task.process}
            atomic_write_json(task.result_path, {"status": "ok", "runs": [run] * task.measurement_iterations})
        return Ended(1, 0, None, t0, time.perf_counter(), started, None)


class Lines:
    def __init__(self):
        self.events: list[tuple] = []

    def __getattr__(self, name):
        return lambda *a, **k: self.events.append((name, a, k))


def make_runner(tmp_path: Path, workers: FakeWorkers, n_gpus: int, concurrent, processes: int = 2):
    cfg = BenchConfig.model_validate(
        {
            "model": "synthetic:sleep",
            "device": "cuda",
            "attn_implementation": "eager",
            "batch_size": [1, 2, 3, 4, 5],
            "measurement_iterations": processes,
            "processes": processes,
            "max_attempts": 1,
        }
    )
    plan = build_plan(cfg, Capabilities("cuda", False, False))
    pool, _, _ = build_pool(concurrent, "cuda", gpus(n_gpus), [1], Topology(tuple(range(8))))
    reporter = Lines()
    settings = Settings.from_config(cfg)
    runner = Runner(
        RunDir(tmp_path, "r"), plan, settings, RunMeta(run_id="r"), reporter, workers=workers, pool=pool
    )
    return runner, reporter


def run_plan(tmp_path: Path, workers: FakeWorkers, n_gpus: int, concurrent, processes: int = 2):
    runner, reporter = make_runner(tmp_path, workers, n_gpus, concurrent, processes)
    return runner.execute(), runner, reporter


def overlaps(ran: list[dict]) -> int:
    return max(sum(r["t0"] <= a["t0"] < r["t1"] for r in ran) for a in ran)


def test_units_start_in_round_order_and_a_cells_processes_never_overlap(tmp_path, monkeypatch):
    # The order the scheduler starts units in, seen on its own thread: the workers' clocks start
    # when their threads first run, and on a busy machine that can swap two near-simultaneous starts.
    started_units: list[tuple[int, int]] = []

    def thread(target, args, name):
        cell, process = args[0], args[1]
        started_units.append((process, cell.batch_size))
        return threading.Thread(target=target, args=args, name=name)

    monkeypatch.setattr(runner_module, "threading", SimpleNamespace(**{**vars(threading), "Thread": thread}))
    workers = FakeWorkers(seconds=0.4)  # long beside a thread's start on a busy machine
    code, runner, reporter = run_plan(tmp_path, workers, n_gpus=3, concurrent="auto")
    assert code == 0 and {r.status for r in runner.records.values()} == {"ok"}
    assert overlaps(workers.ran) == 3  # 3 GPUs, 8 cores: 3 cells at once
    # Greedy in round order: process 0 of every cell first, then process 1 as their GPUs free up.
    assert started_units[:5] == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]
    assert sorted(started_units[5:]) == [(1, b) for b in range(1, 6)]
    for batch in range(1, 6):
        mine = sorted((r for r in workers.ran if r["batch"] == batch), key=lambda r: r["t0"])
        assert [r["process"] for r in mine] == [0, 1] and mine[0]["t1"] <= mine[1]["t0"]
    # No two units at the same time on one GPU.
    for a in workers.ran:
        for b in workers.ran:
            if a is not b and a["gpus"] == b["gpus"]:
                assert a["t1"] <= b["t0"] or b["t1"] <= a["t0"]
    started = [k for name, _, k in reporter.events if name == "cell_started"]
    assert all(k["slot"]["gpus"] and k["slot"]["cpus"] for k in started)


def test_one_gpu_runs_one_unit_at_a_time(tmp_path):
    workers = FakeWorkers(seconds=0.02)
    code, runner, _ = run_plan(tmp_path, workers, n_gpus=1, concurrent="auto")
    assert code == 0 and overlaps(workers.ran) == 1
    order = [(r["process"], r["batch"]) for r in sorted(workers.ran, key=lambda r: r["t0"])]
    assert order == [(k, b) for k in (0, 1) for b in range(1, 6)]  # round-robin, as before the pool


def test_a_failed_unit_frees_its_slot_and_the_others_finish(tmp_path):
    workers = FakeWorkers(fail={(2, 0)})
    code, runner, _ = run_plan(tmp_path, workers, n_gpus=2, concurrent=2)
    statuses = {rec.cell.batch_size: rec.status for rec in runner.records.values()}
    assert code == 1 and statuses == {1: "ok", 2: "failed", 3: "ok", 4: "ok", 5: "ok"}
    assert not [r for r in workers.ran if r["batch"] == 2 and r["process"] == 1]  # its attempt ended
    rec = next(r for r in runner.records.values() if r.cell.batch_size == 1)
    assert all(p.gpus and p.cpus for p in rec.processes)


def test_a_failed_attempt_is_retried_after_the_others_had_their_turn(tmp_path):
    workers = FakeWorkers(seconds=0.05, fail={(3, 0)})
    runner, _ = make_runner(tmp_path, workers, 2, 2, processes=1)
    runner.settings = runner.settings.model_copy(update={"max_attempts": 2})
    original = workers.run

    def run(task, *args):
        if task.cell["batch_size"] == 3 and any(r["batch"] == 3 for r in workers.ran):
            workers.fail.clear()  # the second attempt succeeds
        return original(task, *args)

    workers.run = run
    assert runner.execute() == 0
    rec = next(r for r in runner.records.values() if r.cell.batch_size == 3)
    assert rec.status == "ok" and rec.attempt == 2 and [a.status for a in rec.attempts] == ["failed"]
    order = [r["batch"] for r in sorted(workers.ran, key=lambda r: r["t0"])]
    assert order[-1] == 3 and order.count(3) == 2  # after every other cell's first attempt


@pytest.mark.parametrize("concurrent", [1, 3])
def test_a_stop_ends_every_running_unit_as_interrupted(tmp_path, concurrent):
    workers = FakeWorkers(seconds=0.05)
    runner, _ = make_runner(tmp_path, workers, 3, concurrent)
    finish = workers.run
    started: list[str] = []

    def run(task, name, timeout_s, stopping, on_phase):
        started.append(task.cell["cell_id"])
        if len(started) == concurrent + 1:  # the first ones are done, the next `concurrent` running
            threading.Timer(0.1, runner.on_signal, (signal.SIGTERM, None)).start()
        if len(started) <= concurrent:
            return finish(task, name, timeout_s, stopping, on_phase)
        while not stopping():
            time.sleep(0.01)
        return Ended(1, None, "interrupted", 0.0, 0.0, now_iso(), None)

    workers.run = run
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = runner.execute()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 128 + signal.SIGTERM
    interrupted = {cid for cid, r in runner.records.items() if r.status == "interrupted"}
    assert interrupted == set(started[concurrent:])  # every running unit, and only those
    assert len(interrupted) == concurrent
    assert "running" not in {r.status for r in runner.records.values()}


def test_numa_nodes_from_sysfs_when_nvml_does_not_say(tmp_path):
    from types import SimpleNamespace

    from bench.run.machine import numa_node_of
    from bench.run.pool import read_topology

    device = tmp_path / "pci" / "0000:3b:00.0"
    device.mkdir(parents=True)
    (device / "numa_node").write_text("1\n")
    nv = SimpleNamespace()  # a binding without nvmlDeviceGetNumaNodeId
    assert numa_node_of(nv, 0, "00000000:3B:00.0", root=str(tmp_path / "pci")) == 1
    (device / "numa_node").write_text("-1\n")  # the machine does not say
    assert numa_node_of(nv, 0, "00000000:3B:00.0", root=str(tmp_path / "pci")) is None
    assert numa_node_of(nv, 0, None) is None
    for node, cpus in (("node0", "0-3"), ("node1", "4-7")):
        (tmp_path / "nodes" / node).mkdir(parents=True)
        (tmp_path / "nodes" / node / "cpulist").write_text(cpus + "\n")
    topo = read_topology(str(tmp_path / "nodes"))
    assert topo.nodes == {0: frozenset(range(4)), 1: frozenset(range(4, 8))}
    assert topo.allowed == tuple(sorted(os.sched_getaffinity(0)))


def test_a_tensor_parallel_cell_takes_a_slot_per_gpu_with_its_cores():
    """Beside one-GPU cells, a tp4 cell holds four slots: four GPUs and their four core shares, all on
    one NUMA node, so that each of its ranks has the cores a one-GPU cell has."""
    g = gpus(8, [0, 0, 0, 0, 1, 1, 1, 1])
    pool = Pool(g, core_shares(8, TWO_NODES, [0, 0, 0, 0, 1, 1, 1, 1]), 8, pin=True, unit=1)
    small = pool.acquire(1)
    tp4 = pool.acquire(4)
    assert tp4 is not None and len(tp4.gpus) == 4 and len(tp4.cpus) == 8 and len(tp4.shares) == 4
    assert tp4.numa_node == 1 and {x.numa_node for x in tp4.gpus} == {1}  # node 0 has 3 GPUs left
    assert set(tp4.cpus) <= TWO_NODES.nodes[1] and not set(tp4.cpus) & set(small.cpus)
    others = [pool.acquire(1) for _ in range(3)]
    assert all(o is not None for o in others) and pool.acquire(1) is None
    pool.release(tp4)
    assert pool.acquire(4) is not None
