"""The command line: `tfbench <command>` (bench.cli.main), its inputs and its verdict commands."""

from bench.cli.main import main

__all__ = ["main"]
