"""The parent side of a run: prepares the jobs of a config, picks or resumes the run directory,
runs every cell in a worker process (attempts, timeouts, signals), merges shards and pushes.
It never imports torch nor initializes CUDA."""
