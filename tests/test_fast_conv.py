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
        with fl.forms(cpu_forms):
            params = fl.Conv(24, (3, 3), 1).init(jax.random.PRNGKey(0), x)
            grad = jax.jit(jax.grad(lambda p, x: jnp.sum(fl.Conv(24, (3, 3), 1).apply(p, x) ** 2)))
            hlo = grad.lower(params, x).compile().as_text()
        return re.findall(r"f32\[32,16,16,8\]\S* transpose\(", hlo) + \
            re.findall(r"f32\[8,16,16,32\]\S* transpose\([^)]*\), dimensions=\{3,1,2,0\}", hlo)
    assert permutes(True) == []
    assert permutes(False) != []


def test_conv_cpu_second_order_derivatives_equal_the_plain_convolution():
    """grad of grad and forward-over-reverse through the custom rule, against lax's own convolution, in
    float64: both are the same bilinear sums of ≤ 2·9·6·4·6·6 products of O(1) terms, so they agree to
    ≲ 1e4·2⁻⁵² ≈ 2e-12 relative; a wrong rule term moves them by O(1)."""
    with jax.enable_x64(True):
        x = jnp.asarray(_x((4, 6, 6, 5)), jnp.float64)
        w = jnp.asarray(_x((3, 3, 5, 6), 1), jnp.float64)
        tw = jnp.asarray(_x((3, 3, 5, 6), 2), jnp.float64)
        for conv in (fl.conv_cpu, fl._conv):
            loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w, 1)))
            hvp = jax.jvp(lambda w: jax.grad(loss, argnums=(0, 1))(x, w), (w,), (tw,))[1]
            gg = jax.grad(lambda x: jnp.sum(jax.grad(loss, argnums=1)(x, w) ** 2))(x)
            if conv is fl.conv_cpu:
                ours = (hvp, gg)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves((hvp, gg))):
            assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-10 * np.abs(np.asarray(b)).max()
            assert np.abs(np.asarray(b)).max() > 1e-3          # not a comparison of zeros
