"""Configuration: what a person asks for (files, TFBENCH_* variables, flags), validated once.

The lowest layer above errors and secrets: it imports nothing else of tfbench, and nothing here
imports torch.
"""
