#!/usr/bin/env python3
"""Container entry: `tfbench run` with the container's defaults.

The config comes from TFBENCH_CONFIG, else the mounted /cfg (config.yaml, .yml, .json or
.jsonl there), else the embedded CPU demo; results go to TFBENCH_OUTPUT, else the mounted
/results, else ./results. Extra arguments are passed to `tfbench run`.
"""

import os
import sys

from bench.cli import main


def container_defaults(environ: dict) -> None:
    if not environ.get("TFBENCH_CONFIG") and os.path.isdir("/cfg"):
        environ["TFBENCH_CONFIG"] = "/cfg"
    if not environ.get("TFBENCH_OUTPUT") and os.path.isdir("/results"):
        environ["TFBENCH_OUTPUT"] = "/results"


if __name__ == "__main__":
    container_defaults(os.environ)
    sys.exit(main(["run", *sys.argv[1:]]))
