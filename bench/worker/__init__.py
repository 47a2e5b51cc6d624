"""The worker: one fresh process per cell. Loads the model, warms up, measures with the token
clock, samples the GPU, and writes one result. The only layer that imports torch."""

import logging

# transformers imports torchao when it is installed (its torchao quantizer), and torchao's import
# warns that a CPU torch cannot load its CUDA extensions and that it re-registers enums with
# torch's pytree. The fork server imports the worker once, with the run's stderr as its own: the
# warnings would land between the run's log lines (breaking TFBENCH_LOG_FORMAT=json) on every
# run, about an optional package most cells never use. Their errors still show.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
