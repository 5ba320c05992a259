"""fast_layers.conv_cpu: the weight derivative reads x pre-permuted to [C,H,W,N] (values and derivatives
against flax's nn.Conv are in test_fast_layers.py)."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro.models import fast_layers as fl


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_to_chwn_is_the_n_c_permutation():
    x = _x((5, 4, 3, 7))
    np.testing.assert_array_equal(fl.to_chwn(jnp.asarray(x)), np.transpose(x, (3, 1, 2, 0)))


def test_cpu_conv_weight_gradient_needs_no_n_c_permutation():
    """XLA:CPU's weight-gradient convolution reads x as [C,H,W,N]; permuting NHWC x there in one pass re-reads
    every input line ~16 times. conv_cpu hands it x already in that layout; the plain form leaves XLA a
    transpose with dimensions {3,1,2,0} of the whole activation."""
    x = jnp.asarray(_x((8, 16, 16, 32)))

    def permutes(cpu_forms):
        old, fl.CPU_FORMS = fl.CPU_FORMS, cpu_forms
        try:
            params = fl.Conv(24, (3, 3), 1).init(jax.random.PRNGKey(0), x)
            grad = jax.jit(jax.grad(lambda p, x: jnp.sum(fl.Conv(24, (3, 3), 1).apply(p, x) ** 2)))
            hlo = grad.lower(params, x).compile().as_text()
        finally:
            fl.CPU_FORMS = old
        return re.findall(r"f32\[32,16,16,8\]\S* transpose\(", hlo) + \
            re.findall(r"f32\[8,16,16,32\]\S* transpose\([^)]*\), dimensions=\{3,1,2,0\}", hlo)
    assert permutes(True) == []
    assert permutes(False) != []
