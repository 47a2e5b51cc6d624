"""The results contract: the typed records of a run and its cells, their statistics, and the
run directory on disk (atomic writes, the one reader of a run). No torch here."""
