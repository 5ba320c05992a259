"""jaxrepro: learned vs closed-form optimal denoisers in JAX/Flax (Zhang et al., ICML 2024)."""
from jaxrepro import _xla_flags

_xla_flags.apply()      # before JAX starts: XLA's own CPU convolutions (see jaxrepro/_xla_flags.py)
__version__ = "0.1.0"
