"""tfbench: a batch benchmark appliance for Hugging Face transformers inference."""

__version__ = "0.1.0"

# Version of the results layout (run.json, cells/*.json, summary.jsonl). Bump on any
# incompatible change so that readers can tell layouts apart.
SCHEMA_VERSION = 1
