"""What this machine has, found without initializing CUDA (the parent process must never do that).

GPUs are read through NVML (nvidia-ml-py), which does not create a CUDA context; optional
packages are found with importlib without importing them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.config.schema import TEST_NVML_ENV
from bench.errors import UserError
from bench.plan.matrix import QUANTIZATION_PACKAGES, Capabilities

TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "flash-attn",
    "kernels",
    "torchao",
    "bitsandbytes",
    "huggingface_hub",
    "tokenizers",
    "safetensors",
    "numpy",
    "nvidia-ml-py",
    "tfbench",
)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_bytes: int
    uuid: str
    pci_bus_id: str | None = None
    numa_node: int | None = None  # the host's NUMA node nearest the GPU; None when the machine says nothing


@dataclass(frozen=True)
class Accelerators:
    cuda: bool
    reason: str  # why there is no usable GPU, or "" when there is one
    gpus: list[GpuInfo] = field(default_factory=list)
    driver_version: str | None = None
    cuda_driver_version: str | None = None


def _visible_indices(count: int, environ: Mapping[str, str]) -> list[int] | None:
    """Indices CUDA_VISIBLE_DEVICES leaves visible; None when it holds UUIDs we cannot map here."""
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return list(range(count))
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    indices = []
    for part in parts:
        if not part.lstrip("-").isdigit():
            return None
        idx = int(part)
        if idx < 0:
            break  # CUDA stops at the first invalid index
        if idx < count:
            indices.append(idx)
    return indices


def _load_nvml(environ: Mapping[str, str], nvml: Any) -> Any:
    """pynvml, or a test double: `nvml` itself, or the one TFBENCH_TEST_NVML names ("pkg.mod:attr",
    a module-like object or a factory), how the test suite and the harness's benchmarks simulate
    GPUs on a machine without one. Never for users."""
    if nvml is not None:
        return nvml
    spec = environ.get(TEST_NVML_ENV)
    if spec:
        mod, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(mod), attr) if attr else importlib.import_module(mod)
        return obj() if callable(obj) and not hasattr(obj, "nvmlInit") else obj
    import pynvml

    return pynvml


def numa_node_of(
    nv: Any, handle: Any, pci_bus_id: str | None, root: str = "/sys/bus/pci/devices"
) -> int | None:
    """The GPU's NUMA node: NVML's answer where the binding has it, else the PCI device's numa_node
    in sysfs (-1 there, or nothing, means the machine does not say)."""
    get = getattr(nv, "nvmlDeviceGetNumaNodeId", None)
    if get is not None:
        with contextlib.suppress(Exception):
            node = int(get(handle))
            return node if node >= 0 else None
    if not pci_bus_id:
        return None
    # NVML writes 8 hex digits of PCI domain, sysfs 4: 00000000:3B:00.0 -> 0000:3b:00.0
    domain, _, rest = pci_bus_id.lower().partition(":")
    try:
        node = int((Path(root) / f"{domain[-4:]}:{rest}" / "numa_node").read_text())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def _pci_bus_id(nv: Any, handle: Any) -> str | None:
    try:
        info = nv.nvmlDeviceGetPciInfo(handle)
    except Exception:
        return None
    bus = getattr(info, "busId", None) or getattr(info, "busIdLegacy", None)
    return _text(bus) if bus else None


def detect_accelerators(environ: Mapping[str, str] | None = None, nvml: Any = None) -> Accelerators:
    """The visible GPUs through NVML (nvml: a module-like stand-in for pynvml, for tests)."""
    environ = os.environ if environ is None else environ
    try:
        pynvml = _load_nvml(environ, nvml)
    except ImportError:
        return Accelerators(False, "nvidia-ml-py (pynvml) is not installed")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return Accelerators(False, f"no NVIDIA driver reachable through NVML ({exc})")
    try:
        count = pynvml.nvmlDeviceGetCount()
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        try:
            cuda_v = pynvml.nvmlSystemGetCudaDriverVersion()
            cuda_driver = f"{cuda_v // 1000}.{(cuda_v % 1000) // 10}"
        except Exception:
            cuda_driver = None
        visible = _visible_indices(count, environ)
        if visible is None:
            visible = list(range(count))
        gpus = []
        for i in visible:
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            bus = _pci_bus_id(pynvml, h)
            gpus.append(
                GpuInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(h)),
                    memory_total_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                    pci_bus_id=bus,
                    numa_node=numa_node_of(pynvml, h, bus),
                )
            )
    except Exception as exc:
        return Accelerators(False, f"NVML error while listing GPUs ({exc})")
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    if not gpus:
        reason = "no GPU visible" + (
            f" (CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r})"
            if "CUDA_VISIBLE_DEVICES" in environ
            else ""
        )
        return Accelerators(False, reason, [], driver, cuda_driver)
    return Accelerators(True, "", gpus, driver, cuda_driver)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_installed(module: str) -> bool:
    """True when the module can be found; it is not imported (flash_attn imports torch and CUDA)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    return {name: _version(name) for name in TRACKED_PACKAGES}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured_commit(environ: dict[str, str] | None = None) -> dict[str, str | None]:
    """The commit being measured: TFBENCH_COMMIT, else the transformers git sha pip recorded, if any."""
    environ = os.environ if environ is None else environ
    if environ.get("TFBENCH_COMMIT"):
        return {"sha": environ["TFBENCH_COMMIT"], "source": "TFBENCH_COMMIT"}
    try:
        direct = importlib.metadata.distribution("transformers").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        direct = None
    if direct:
        try:
            vcs = json.loads(direct).get("vcs_info", {})
        except json.JSONDecodeError:
            vcs = {}
        if vcs.get("commit_id"):
            return {"sha": vcs["commit_id"], "source": "transformers install (direct_url.json)"}
    return {"sha": None, "source": None}


def environment(accel: Accelerators) -> dict[str, Any]:
    """The parent's view of the environment for run.json (the worker adds what needs torch)."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "cuda_available": accel.cuda,
        "cuda_unavailable_reason": accel.reason or None,
        "driver_version": accel.driver_version,
        "cuda_driver_version": accel.cuda_driver_version,
        "gpus": [asdict(g) for g in accel.gpus],
    }


def capabilities(
    config_device: str,
    accel: Accelerators,
    for_run: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Capabilities:
    """What the plan may assume. A run on cuda needs a GPU here; a plan for cuda may be made anywhere."""
    if config_device == "cuda" and not accel.cuda and for_run:
        raise UserError(
            f"device is cuda but no NVIDIA GPU is usable: {accel.reason}. "
            "In Docker, pass the GPUs with `docker run --gpus all ...`; or set device: cpu."
        )
    device = config_device if config_device != "auto" else ("cuda" if accel.cuda else "cpu")
    environ = os.environ if environ is None else environ
    cache = offline_kernels_cache(environ)
    return Capabilities(
        device=device,
        flash_attn=is_installed("flash_attn"),
        kernels=is_installed("kernels"),
        kernels_version=_version("kernels"),
        kernels_required=kernels_requirement(),
        offline_kernels_cache=cache,
        cached_hub_kernels=cached_hub_kernels(cache, environ) if cache is not None else frozenset(),
        quantization_packages=quantization_packages(),
        quantization_minimums=quantization_minimums(),
        gpu_count=len(accel.gpus),
        cpu_count=usable_cpus(),
    )


def usable_cpus() -> int | None:
    """The CPUs this process may run on (its affinity, as a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _import_utils_source(package_dir: str | None) -> str | None:
    """transformers' utils/import_utils.py, read as text: the parent does not import transformers
    (most of a second and some 570 modules)."""
    if package_dir is None:
        try:
            spec = importlib.util.find_spec("transformers")
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        package_dir = list(spec.submodule_search_locations)[0]
    try:
        return (Path(package_dir) / "utils" / "import_utils.py").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _constant(source: str, name: str) -> str | None:
    found = re.search(rf'^{name} = "([^"]+)"$', source, flags=re.M)
    return found.group(1) if found else None


def kernels_requirement(package_dir: str | None = None) -> tuple[str, str] | None:
    """The kernels versions [min, max) transformers loads hub kernels with (KERNELS_MIN_VERSION and
    KERNELS_MAX_VERSION of its utils/import_utils.py). None where it names no range."""
    source = _import_utils_source(package_dir)
    if source is None:
        return None
    low, high = _constant(source, "KERNELS_MIN_VERSION"), _constant(source, "KERNELS_MAX_VERSION")
    if low is None or high is None:
        return None
    return low, high


def quantization_packages() -> dict[str, str | None]:
    """The installed version of each package transformers quantizes with (None: not installed)."""
    return {p: _version(p) for ps in QUANTIZATION_PACKAGES.values() for p in ps}


def quantization_minimums(package_dir: str | None = None) -> dict[str, str]:
    """The least version of each quantization package transformers quantizes with (its
    TORCHAO_MIN_VERSION, BITSANDBYTES_MIN_VERSION, ACCELERATE_MIN_VERSION), where it names one."""
    source = _import_utils_source(package_dir)
    if source is None:
        return {}
    found = {
        p: _constant(source, f"{p.upper()}_MIN_VERSION") for ps in QUANTIZATION_PACKAGES.values() for p in ps
    }
    return {p: v for p, v in found.items() if v is not None}


def _true(value: str | None) -> bool:
    """huggingface_hub's reading of a boolean variable (constants._is_true)."""
    return value is not None and value.upper() in {"1", "ON", "YES", "TRUE"}


def offline_kernels_cache(environ: Mapping[str, str]) -> str | None:
    """The directory kernels loads hub kernels from while HF_HUB_OFFLINE is set (None when it is not).

    kernels reads KERNELS_CACHE, else huggingface_hub's hub cache (kernels' hf_hub._get_cache_dir
    and _versions._get_available_versions_from_cache); huggingface_hub finds that one as its
    constants.HF_HUB_CACHE does, which this repeats: the parent reads the variables of the run,
    not those huggingface_hub saw when it was imported."""
    if not _true(environ.get("HF_HUB_OFFLINE") or environ.get("TRANSFORMERS_OFFLINE")):
        return None
    if environ.get("KERNELS_CACHE"):
        return environ["KERNELS_CACHE"]
    home = environ.get("HF_HOME") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    hub = environ.get("HF_HUB_CACHE") or environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(hub))


def cached_hub_kernels(cache: str, environ: Mapping[str, str]) -> frozenset[str]:
    """What kernels can load offline: ORG/NAME@REVISION for every commit in `cache` with a build and
    every ref (branch, tag) that points at one, and ORG/NAME alone for each repo LOCAL_KERNELS maps
    to a directory (kernels loads that one for any revision, before looking in the cache)."""
    found: set[str] = set()
    try:
        repos = sorted(Path(cache).glob("kernels--*--*"))  # huggingface_hub's repo_folder_name
    except OSError:
        repos = []
    for folder in repos:
        repo = folder.name.removeprefix("kernels--").replace("--", "/", 1)
        snapshots, refs = folder / "snapshots", folder / "refs"
        try:
            commits = {p.name for p in snapshots.iterdir() if (p / "build").is_dir()}
        except OSError:
            continue
        found |= {f"{repo}@{commit}" for commit in commits}
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for ref in refs.iterdir():
                if ref.is_file() and ref.read_text(encoding="utf-8").strip() in commits:
                    found.add(f"{repo}@{ref.name}")
    for entry in (environ.get("LOCAL_KERNELS") or "").split(":"):
        repo, sep, _ = entry.partition("=")
        if sep and repo:
            found.add(repo)
    return frozenset(found)
