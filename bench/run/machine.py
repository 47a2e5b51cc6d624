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
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.errors import UserError
from bench.plan.matrix import Capabilities

TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "flash-attn",
    "kernels",
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


@dataclass(frozen=True)
class Accelerators:
    cuda: bool
    reason: str  # why there is no usable GPU, or "" when there is one
    gpus: list[GpuInfo] = field(default_factory=list)
    driver_version: str | None = None
    cuda_driver_version: str | None = None


def _visible_indices(count: int, environ: dict[str, str] | os._Environ[str]) -> list[int] | None:
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


def detect_accelerators(environ: dict[str, str] | None = None) -> Accelerators:
    environ = os.environ if environ is None else environ
    try:
        import pynvml
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
            gpus.append(
                GpuInfo(
                    index=i,
                    name=_text(pynvml.nvmlDeviceGetName(h)),
                    memory_total_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
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


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


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


def capabilities(config_device: str, accel: Accelerators, for_run: bool = True) -> Capabilities:
    """What the plan may assume. A run on cuda needs a GPU here; a plan for cuda may be made anywhere."""
    if config_device == "cuda" and not accel.cuda and for_run:
        raise UserError(
            f"device is cuda but no NVIDIA GPU is usable: {accel.reason}. "
            "In Docker, pass the GPUs with `docker run --gpus all ...`; or set device: cpu."
        )
    device = config_device if config_device != "auto" else ("cuda" if accel.cuda else "cpu")
    return Capabilities(device=device, flash_attn=is_installed("flash_attn"), kernels=is_installed("kernels"))
