"""stlight-jax: STLight spatio-temporal predictive learning in JAX / Flax NNX."""

__version__ = "0.1.0"


def load(source, config=None, **kwargs):
    """Loads a trained STLight for prediction; see `stlight_jax.api.load`."""
    from stlight_jax.api import load as _load  # keeps `import stlight_jax` light

    return _load(source, config, **kwargs)
