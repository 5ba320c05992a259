"""jaxrepro turns XLA:CPU's YNNPACK fusions off before JAX starts, unless the user chose otherwise."""
import os
import subprocess
import sys

from jaxrepro._xla_flags import OPT_OUT, YNN_FLAG, tuned_xla_flags

_PROBE = """
import jaxrepro, jax, jax.numpy as jnp
x, w = jnp.ones((8, 32, 32, 64)), jnp.ones((3, 3, 64, 64))     # a DDPM++ C = 32 layer
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
print("ynn" if "__ynn_fusion" in jax.jit(conv).lower(x, w).compile().as_text() else "xla")
"""


def _conv_backend(**env):
    """Which backend XLA:CPU compiles a 3×3 convolution to in a fresh process with this environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=dict(base, JAX_PLATFORMS="cpu", **env),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()[-1]


def test_convolutions_compile_to_xla_own_kernels_after_import():
    assert _conv_backend() == "xla"
    # the premise: without the setting this jaxlib sends the convolution to YNNPACK
    assert _conv_backend(**{OPT_OUT: "0"}) == "ynn"
    assert _conv_backend(XLA_FLAGS=f"{YNN_FLAG}=individual_convolution") == "ynn"   # the user's choice stands


def test_flags_are_appended_not_replaced():
    assert tuned_xla_flags({}) == f"{YNN_FLAG}="
    assert tuned_xla_flags({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}) == \
        f"--xla_force_host_platform_device_count=8 {YNN_FLAG}="
    assert tuned_xla_flags({"XLA_FLAGS": f"{YNN_FLAG}=eltwise"}) == f"{YNN_FLAG}=eltwise"
    assert tuned_xla_flags({OPT_OUT: "0", "XLA_FLAGS": "--a=1"}) == "--a=1"
