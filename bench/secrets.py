"""Keeping access tokens out of everything tfbench writes or prints.

`redact(text)` replaces two things with [REDACTED]:

- the values of secret-bearing environment variables: HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
  HF_API_TOKEN, and any variable whose name ends with TOKEN, SECRET, PASSWORD or KEY or
  contains CREDENTIAL (values of 8 characters or more; all-digit values are left alone, since
  replacing them would corrupt numbers in the results);
- anything shaped like a common access token: a Hugging Face token (hf_ and 30+ letters and
  digits), GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_), OpenAI-style keys (sk-),
  AWS access key ids (AKIA/ASIA), Slack tokens (xox?-), and the credential of a Bearer header.

It is applied where text leaves the process: every result file (store.atomic_write_text), every
log line (logs.py), the worker's log files (after the worker exits), stdout and stderr of the
command line, and what is uploaded to the Hub. The patterns are narrow on purpose: cell ids,
commit shas, paths and numbers never match, so redaction cannot damage results.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

REDACTED = "[REDACTED]"
SECRET_ENV_NAMES = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN"})
SECRET_NAME_SUFFIXES = ("TOKEN", "SECRET", "PASSWORD", "KEY")
SECRET_NAME_PART = "CREDENTIAL"
# Shorter values would match ordinary words and numbers in the results.
MIN_SECRET_LENGTH = 8


def _word_start(prefix: int) -> str:
    """Placed after a literal prefix of `prefix` characters: that prefix must not continue a word,
    but may follow an escaped newline or tab of JSON text ("\\nsk-..."). A lookbehind after the
    literal, not before it, lets the regex engine jump from one occurrence of the literal to the
    next: ten times faster on large result files."""
    return rf"(?:(?<![A-Za-z0-9_-].{{{prefix}}})|(?<=\\[nrtbf].{{{prefix}}}))"


# (literal hints, pattern): the pattern only runs when one hint occurs.
_TOKEN_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    (("hf_",), re.compile(r"hf_[A-Za-z0-9]{30,}")),
    (("gh",), re.compile(r"gh[pousr]_[A-Za-z0-9]{36,}")),
    (("github_pat_",), re.compile(r"github_pat_[A-Za-z0-9_]{22,}")),
    # sk-... keys mix letters and digits; requiring both spares names like "sk-learn-benchmarks".
    (
        ("sk-",),
        re.compile(
            r"sk-" + _word_start(3) + r"(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{20,}"
        ),
    ),
    (("AKIA", "ASIA"), re.compile(r"A[KS]IA(?<![A-Z0-9].{4})[A-Z0-9]{16}(?![A-Z0-9])")),
    (("xox",), re.compile(r"xox[abposr]-" + _word_start(5) + r"[A-Za-z0-9-]{10,}")),
)
# The header's scheme word is kept ("Bearer [REDACTED]"): the reader still sees what was there.
_BEARERS = tuple(
    (word, re.compile(word + _word_start(6) + r"(\s+)[A-Za-z0-9._~+/=-]{8,}"))
    for word in ("Bearer", "bearer", "BEARER")
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    upper = name.upper()
    return upper in SECRET_ENV_NAMES or upper.endswith(SECRET_NAME_SUFFIXES) or SECRET_NAME_PART in upper


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values to redact from the environment, longest first, with the forms they take in
    JSON text and URLs (a value holding a quote or a non-ASCII letter is stored escaped)."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in environ.items():
        if not is_secret_name(name):
            continue
        for raw in (value, value.strip()):
            if len(raw) < MIN_SECRET_LENGTH or raw.isdigit():
                continue
            found.add(raw)
            found.add(json.dumps(raw)[1:-1])
            found.add(json.dumps(raw, ensure_ascii=False)[1:-1])
            found.add(quote(raw, safe="", errors="surrogateescape"))
    return sorted((v for v in found if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def looks_like_token(text: str) -> bool:
    """Whether `text` holds something shaped like an access token (the patterns redact removes)."""
    return redact(text, environ={}) != text


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with secret environment values and token-shaped strings replaced by [REDACTED].

    `environ` defaults to os.environ; pass {} to apply the patterns only.
    """
    if not text:
        return text
    for value in secret_values(environ):
        if value in text:
            text = text.replace(value, REDACTED)
    for hints, pattern in _TOKEN_PATTERNS:
        if any(h in text for h in hints):
            text = pattern.sub(REDACTED, text)
    for word, pattern in _BEARERS:
        if word in text:
            text = pattern.sub(lambda m, word=word: word + m.group(1) + REDACTED, text)
    return text


def redact_bytes(data: bytes, environ: Mapping[str, str] | None = None) -> bytes:
    """redact() over UTF-8 bytes; bytes that are not UTF-8 pass through unchanged."""
    text = data.decode("utf-8", errors="surrogateescape")
    clean = redact(text, environ)
    return data if clean == text else clean.encode("utf-8", errors="surrogateescape")


def redact_file(path: str | os.PathLike[str]) -> None:
    """Redact a file in place (a worker's log, written through inherited file descriptors that
    no Python code could filter). Never raises: a log that cannot be read is left as it is."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.redact.tmp")
    try:
        data = p.read_bytes()
        clean = redact_bytes(data)
        if clean != data:
            # A new file renamed over the log: a kill meanwhile leaves the old log or the new one.
            tmp.write_bytes(clean)
            os.replace(tmp, p)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


class RedactingStream:
    """A text stream that redacts each write and passes it to the stream it wraps."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacting_output() -> Iterator[None]:
    """sys.stdout and sys.stderr redacted for the duration (every print, log and library warning)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(saved[0]), RedactingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
