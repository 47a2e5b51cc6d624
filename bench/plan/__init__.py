"""The plan: a config expanded into cells with stable ids, each runnable or skipped with a
reason, and the split of a plan into shards. Pure functions of the config and the machine."""
