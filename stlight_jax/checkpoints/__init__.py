"""Orbax checkpoints of a training run and the digests that let a restore trust them."""
