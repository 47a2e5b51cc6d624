"""Verdicts from results: two runs compared cell by cell, and level shifts across commits.
Pure functions over records; no file or network I/O."""
