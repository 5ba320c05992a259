"""jaxrepro: learned vs closed-form optimal denoisers in JAX/Flax (Zhang et al., ICML 2024)."""
__version__ = "0.1.0"
