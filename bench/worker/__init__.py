"""The worker: one fresh process per cell. Loads the model, warms up, measures with the token
clock, samples the GPU, and writes one result. The only layer that imports torch."""
