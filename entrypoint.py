#!/usr/bin/env python3
"""Container entry: `tfbench run` with the container's defaults.

The config comes from TFBENCH_CONFIG, else the mounted /cfg (config.yaml, .yml, .json or
.jsonl there), else the embedded CPU demo; results go to TFBENCH_OUTPUT, else the mounted
/results, else ./results. Arguments are passed to `tfbench run`, unless the first one names
another subcommand (`ab BASE NEW`, `v2 ...` (benchmark_v2's flags), `merge RUN_DIR`, `push RUN_DIR --repo ORG/NAME`, `plan`, ...), which
then runs instead.
"""

import os
import signal
import sys

# A stop that arrives while the imports run (a second or two) ends the process as the runner
# would: exit 143, nothing written yet. The runner installs its own handler once it runs.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

from bench.cli import main  # noqa: E402

SUBCOMMANDS = (
    "run",
    "ab",
    "plan",
    "merge",
    "push",
    "compare",
    "calibrate",
    "report",
    "history",
    "presets",
    "v2",
)


def container_defaults(environ: dict) -> None:
    if not environ.get("TFBENCH_CONFIG") and os.path.isdir("/cfg"):
        environ["TFBENCH_CONFIG"] = "/cfg"
    if not environ.get("TFBENCH_OUTPUT") and os.path.isdir("/results"):
        environ["TFBENCH_OUTPUT"] = "/results"


def arguments(argv: list) -> list:
    if argv and (argv[0] in SUBCOMMANDS or argv[0] in ("--version", "-h", "--help")):
        return argv
    return ["run", *argv]


if __name__ == "__main__":
    container_defaults(os.environ)
    sys.exit(main(arguments(sys.argv[1:])))
