"""stlight-jax: STLight spatio-temporal predictive learning in JAX / Flax NNX."""

__version__ = "0.1.0"
