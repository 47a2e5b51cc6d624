"""Why a cell failed, in words: out-of-memory told apart from other errors, and a failed model load
explained from what is on disk (the model's files, its cache entry, the code it ships) rather than
from the library's wording."""

from __future__ import annotations

import errno
import json
import traceback
from pathlib import Path
from typing import Any

import torch

from bench.config.presets import is_synthetic


class ModelFault(Exception):
    """The model could not be loaded because of the model itself (its files, its cache entry, the
    code it ships): the message says what is wrong in words; the library's exception is the cause."""

    def __init__(self, words: str, retryable: bool):
        super().__init__(words)
        self.retryable = retryable


# What torch's CPU allocator, glibc and C++ code say when an allocation fails; "not enough
# memory" is the allocator's wording on some platforms and versions.
_OOM_WORDS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
    "bad_alloc",
)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised from or while handling, without looping on cycles."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in out):
        out.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return out


def is_oom(exc: BaseException) -> bool:
    """A failed allocation anywhere in the chain: torch (GPU or CPU allocator), Python, or the OS
    refusing memory (ENOMEM, as under cell_memory_limit_gb)."""
    for e in _chain(exc):
        if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(e, OSError) and e.errno == errno.ENOMEM:
            return True
        if isinstance(e, RuntimeError) and any(w in str(e).lower() for w in _OOM_WORDS):
            return True
    return False


def short_message(exc: BaseException, limit: int = 300) -> str:
    """The exception's message on one line, cut at `limit` characters (its type when it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Model faults: a failed load explained from what is on disk, not from the library's wording
# ---------------------------------------------------------------------------------------------

# Files AutoTokenizer can build a tokenizer from (fast, sentencepiece, BPE, WordPiece, Tekken).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "tekken.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own bound; a larger claim is a corrupt file


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(the file's JSON, None), or (None, what is wrong with it in words)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except json.JSONDecodeError as exc:
        return None, f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path.name} cannot be read ({short_message(exc)})"


def _safetensors_problem(path: Path) -> str | None:
    """Check a .safetensors file against its own header: 8 bytes of header length, the JSON header,
    then exactly the bytes the header's offsets cover. Reads the header only (no mmap, so a
    memory limit cannot make a sound file look broken)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated: {size} bytes, not even a header"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, SAFETENSORS_MAX_HEADER):
                return (
                    f"{path.name} is truncated or corrupt: its header claims {n} bytes, the file has {size}"
                )
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"{path.name} is corrupt: its header cannot be read ({short_message(exc)})"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"{path.name} is truncated: {size} of the {expected} bytes its header describes"
    if size > expected:
        return f"{path.name} is corrupt: {size} bytes where its header describes {expected}"
    return None


def _weight_problems(directory: Path) -> list[str]:
    problems: list[str] = []
    for index in sorted(directory.glob("*.index.json")):
        index_data, bad = _read_json(index)
        if bad is not None:
            problems.append(bad)
            continue
        weight_map = index_data.get("weight_map") if isinstance(index_data, dict) else None
        for name in sorted({v for v in (weight_map or {}).values() if isinstance(v, str)}):
            if not (directory / name).is_file():
                problems.append(f"{name}, listed in {index.name}, is missing")
    for path in sorted(directory.glob("*.safetensors")):
        if (bad := _safetensors_problem(path)) is not None:
            problems.append(bad)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in directory.iterdir()):
        problems.append("no weights (no *.safetensors nor pytorch_model.bin)")
    return problems


def model_dir_problems(directory: Path, tokenizer_failed: bool) -> list[str]:
    """What is wrong with a model directory, in words; empty when nothing visible is."""
    problems: list[str] = []
    config = directory / "config.json"
    if not config.is_file():
        problems.append("no config.json")
    elif (bad := _read_json(config)[1]) is not None:
        problems.append(bad)
    problems += _weight_problems(directory)
    # Only when the tokenizer is what failed: a model may keep its tokenizer in a form not listed.
    if tokenizer_failed and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        problems.append(
            "no tokenizer (none of "
            + ", ".join(TOKENIZER_FILES)
            + "); tfbench tokenizes its prompt with the model's own tokenizer"
        )
    return problems


def _auto_map_words(directory: Path | None) -> str:
    if directory is None:
        return "its config names classes from its own code"
    try:
        auto_map = json.loads((directory / "config.json").read_text(encoding="utf-8"))["auto_map"]
        pairs = ", ".join(f"{k} to {v if isinstance(v, str) else v[0]}" for k, v in auto_map.items())
        return f"its config.json maps {pairs}"
    except Exception:  # noqa: BLE001 - only decorates the message
        return "its config names classes from its own code"


def _cached_snapshot(model: str, revision: str | None) -> Path | None:
    """The local snapshot of a hub model, if the cache holds one (never touches the network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - no snapshot, whatever the reason
        return None


def describe_load_failure(
    exc: BaseException, model: str, revision: str | None, trust_remote_code: bool
) -> tuple[str, bool] | None:
    """(what is wrong, in words; whether another attempt could succeed) for a failed model load
    whose cause lies in the model, or None when the failure is something else."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    if is_synthetic(model):
        return None
    chain = _chain(exc)
    local = Path(model).expanduser()
    is_local = local.is_dir()
    directory = local if is_local else _cached_snapshot(model, revision)
    where = (
        f"model directory {local}"
        if is_local
        else f"model {model}" + (f" at revision {revision}" if revision else "")
    )
    if not trust_remote_code and any("trust_remote_code" in str(e) for e in chain):
        return (
            # The rule first: a reason is cut at 500 characters, the class names can go.
            f"{where} needs trust_remote_code: true, and tfbench runs no code shipped with a model "
            f"unless the config sets it ({_auto_map_words(directory)})",
            False,
        )
    if directory is not None:
        frames = traceback.extract_tb(exc.__traceback__)
        tokenizer_failed = any("tokenization" in Path(f.filename).name for f in frames)
        problems = model_dir_problems(directory, tokenizer_failed)
        if problems:
            if not is_local:
                where += f" (cached in {directory})"
            words = f"{where}: " + "; ".join(problems)
            said = [e for e in chain if type(e).__name__ == "SafetensorError"]
            if said:
                words += f" ({short_message(said[0])})"
            return words, False
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain) and not is_local:
        cached = "only partly in" if directory is not None else "not in"
        if constants.HF_HUB_OFFLINE:
            return (
                f"{where} is {cached} the local cache (HF_HOME={constants.HF_HOME}) "
                "and HF_HUB_OFFLINE=1 forbids a download",
                False,
            )
        return (
            f"{where} is {cached} the local cache (HF_HOME={constants.HF_HOME}) and the Hub could not "
            f"be reached ({short_message(chain[-1])})",
            True,  # the network may come back
        )
    return None
