"""fast_layers (GroupNorm, Conv, per-channel adds written with matmul sums) against float64 references and
flax's own nn.GroupNorm / nn.Conv, in both the matmul-sum (CPU) and plain-broadcast (GPU/TPU) forms.

Error bounds: every quantity is a float32 sum of n ≤ 4,096 terms of O(1) size, computed in a different order
than the reference; a recursive float32 sum has relative error ≤ n·2⁻²⁴ ≈ 2.4e-4 in the worst case (blocked
and pairwise orders are far below it), and the GroupNorm variance E[x²] − E[x]² at mean 1, std 2 loses a factor
(m² + σ²)/σ² = 1.25 more. Tolerances are set from these worst cases, not from observed differences.
"""
import contextlib
import io
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro.models import fast_layers as fl
from jaxrepro.models.layers import dropout

EPS32 = 2.0 ** -24


@pytest.fixture(params=[True, False], ids=["matmul_sums", "broadcast"])
def sums(request):
    with fl.forms(request.param):
        yield request.param


def _x(shape, seed=0, mean=1.0, std=2.0):
    return (mean + std * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _group_norm64(x, g, scale, bias, eps):
    b, c = x.shape[0], x.shape[-1]
    xg = x.astype(np.float64).reshape(b, -1, g, c // g)
    m = xg.mean(axis=(1, 3), keepdims=True)
    v = xg.var(axis=(1, 3), keepdims=True)
    return ((xg - m) / np.sqrt(v + eps)).reshape(x.shape) * scale + bias


def test_group_norm_equals_float64_and_flax_values_grads_and_jvp(sums):
    x = _x((3, 8, 8, 16))
    g, eps = 4, 1e-6
    ours, ref = fl.GroupNorm(g, eps), nn.GroupNorm(num_groups=g, epsilon=eps)
    params = ours.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref.init(jax.random.PRNGKey(0), x))
    rng = np.random.default_rng(1)
    params = {"params": {"scale": jnp.asarray(1 + 0.3 * rng.standard_normal(16), jnp.float32),
                         "bias": jnp.asarray(0.3 * rng.standard_normal(16), jnp.float32)}}
    y = np.asarray(ours.apply(params, x))
    # n = 8·8·4 = 256 terms per group. Mean: |Δm| ≤ n·u·E|x| (u = 2⁻²⁴, E|x| ≤ 2.5); variance E[x²] − m²:
    # |Δv| ≤ n·u·E[x²] + 2|m||Δm| ≤ n·u·(5 + 5), so |Δrstd|/rstd ≤ n·u·10/(2σ²) = n·u·1.25. With |scale| ≤ 2,
    # |x̂| ≤ 5, rstd ≈ 0.5: |Δy| ≤ 2·(0.5·|Δm| + 5·n·u·1.25) + a few roundings ≤ 2·8·n·u.
    bound = 2 * 8 * 256 * EPS32
    y64 = _group_norm64(x, g, np.asarray(params["params"]["scale"]), np.asarray(params["params"]["bias"]), eps)
    assert np.abs(y - y64).max() <= bound
    cot = jnp.asarray(_x(x.shape, 2, 0.0, 1.0))
    scale = np.asarray(params["params"]["scale"])
    xhat = (y64 - np.asarray(params["params"]["bias"])) / scale
    assert np.abs(cot).max() <= 4 and np.abs(scale).max() <= 1.6 and np.abs(xhat).max() <= 5   # the bounds' premises
    loss = lambda m: (lambda p, x: jnp.sum(m.apply(p, x) * cot))
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    # Per entry, first order in u, with m = 3·64 = 192 terms per channel and n = 256 per group; x̂ carries
    # |Δx̂| ≤ 8·n·u (forward bound above over |scale|). bias: Σ cot, m·u·Σ|cot| ≤ m·u·4m. scale: Σ cot·x̂,
    # m·u·20m + 4m·|Δx̂|. x: rstd·(g − mean(g) − x̂·mean(g·x̂)), g = cot·scale (|g| ≤ 6.4, |g·x̂| ≤ 32), rstd ≤ 0.6:
    # 0.6·(n·u·6.4 + 5·n·u·32 + |Δx̂|·(6.4 + 32)). Each bound is doubled: both implementations err.
    u, m, n, dxhat = EPS32, 192, 256, 8 * 256 * EPS32
    tol = {"bias": m * u * 4 * m, "scale": m * u * 20 * m + 4 * m * dxhat,
           "x": 0.6 * (n * u * 6.4 + 5 * n * u * 32 + dxhat * (6.4 + 32))}
    pairs = {"bias": (g_ours[0]["params"]["bias"], g_ref[0]["params"]["bias"]),
             "scale": (g_ours[0]["params"]["scale"], g_ref[0]["params"]["scale"]), "x": (g_ours[1], g_ref[1])}
    for name, (a, b) in pairs.items():
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 2 * tol[name], name
        assert 2 * tol[name] < 0.05 * np.abs(np.asarray(b)).max(), name      # the check can see a 5 % error
    tangent = jnp.asarray(_x(x.shape, 3, 0.0, 1.0))
    j_ours = jax.jvp(lambda x: ours.apply(params, x), (x,), (tangent,))[1]
    j_ref = jax.jvp(lambda x: ref.apply(params, x), (x,), (tangent,))[1]
    assert np.abs(np.asarray(j_ours) - np.asarray(j_ref)).max() <= 2 * bound * 4   # |tangent| ≤ 5 for |x|; both err


def test_group_norm_silu_equals_flax_and_keeps_only_the_sums_for_the_backward_pass(sums):
    x = _x((3, 8, 8, 16))
    ours, ref = fl.GroupNorm(4, 1e-6, silu=True), nn.GroupNorm(num_groups=4, epsilon=1e-6)
    rng = np.random.default_rng(1)
    params = {"params": {"scale": jnp.asarray(1 + 0.3 * rng.standard_normal(16), jnp.float32),
                         "bias": jnp.asarray(0.3 * rng.standard_normal(16), jnp.float32)}}
    silu64 = lambda y: y / (1 + np.exp(-y))
    y64 = _group_norm64(x, 4, np.asarray(params["params"]["scale"]), np.asarray(params["params"]["bias"]), 1e-6)
    # SiLU' ∈ [−0.1, 1.1]: the GroupNorm bound of the test above times 1.1, plus SiLU's own few roundings of |y| ≤ 10
    u, m, n = EPS32, 192, 256
    assert np.abs(np.asarray(ours.apply(params, x)) - silu64(y64)).max() <= 1.1 * 2 * 8 * n * u + 8 * u * 10
    cot = jnp.asarray(_x(x.shape, 2, 0.0, 1.0))
    g_ours = jax.grad(lambda p, x: jnp.sum(ours.apply(p, x) * cot), argnums=(0, 1))(params, x)
    g_ref = jax.grad(lambda p, x: jnp.sum(nn.silu(ref.apply(p, x)) * cot), argnums=(0, 1))(params, x)
    # the bounds of the GroupNorm gradient test with the cotangent scaled by SiLU' (≤ 1.1), plus SiLU' itself
    # evaluated with relative error ≤ 8u on each of ≤ m terms of size ≤ 4·1.1·5
    # evaluated with relative error ≤ 8u on each of ≤ m terms of size ≤ 4·1.1·5; and, first order, SiLU' taken
    # at the two sides' own y, which differ by ≤ dy = 2·(2·8·n·u) (the value bound, both sides): per entry
    # |cot|·|SiLU''(y)|·dy, summed per channel for bias (× |x̂| for scale) and for x pushed through the
    # GroupNorm backward rstd·scale·(e − mean e − x̂·mean(e·x̂)), ≤ 0.6·1.6·(2 + 5·5)·max e
    dxhat, dy = 8 * n * u, 2 * 2 * 8 * n * u
    s64 = 1 / (1 + np.exp(-y64))
    e = np.abs(np.asarray(cot, np.float64)) * s64 * (1 - s64) * np.abs(2 + y64 * (1 - 2 * s64)) * dy   # |SiLU''|
    xhat = (y64 - np.asarray(params["params"]["bias"])) / np.asarray(params["params"]["scale"])
    first = {"bias": e.sum((0, 1, 2)).max(), "scale": (e * np.abs(xhat)).sum((0, 1, 2)).max(),
             "x": 0.6 * 1.6 * 27 * e.max()}
    tol = {"bias": m * u * 4 * m, "scale": m * u * 20 * m + 4 * m * dxhat,
           "x": 0.6 * (n * u * 6.4 + 5 * n * u * 32 + dxhat * (6.4 + 32))}
    pairs = {"bias": (g_ours[0]["params"]["bias"], g_ref[0]["params"]["bias"]),
             "scale": (g_ours[0]["params"]["scale"], g_ref[0]["params"]["scale"]), "x": (g_ours[1], g_ref[1])}
    for name, (a, b) in pairs.items():
        bound = 2 * 1.1 * tol[name] + 8 * u * m * 22 + first[name]
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= bound, name
        assert bound < 0.05 * np.abs(np.asarray(b)).max(), name
    tangent = jnp.asarray(_x(x.shape, 3, 0.0, 1.0))
    j_ours = jax.jvp(lambda x: ours.apply(params, x), (x,), (tangent,))[1]
    j_ref = jax.jvp(lambda x: nn.silu(ref.apply(params, x)), (x,), (tangent,))[1]
    # ẏ·SiLU'(y): the GroupNorm tangent bound (both sides) × 1.1, SiLU's roundings, and SiLU' at the two y's
    h, sc, bi = 1e-4, np.asarray(params["params"]["scale"]), np.asarray(params["params"]["bias"])
    ydot64 = (_group_norm64(x + h * np.asarray(tangent), 4, sc, bi, 1e-6)
              - _group_norm64(x - h * np.asarray(tangent), 4, sc, bi, 1e-6)) / (2 * h)   # float64, error ~h²
    jbound = 2 * 1.1 * 2 * 8 * n * u * 4 + 8 * u * 10 + 0.5 * dy * np.abs(ydot64).max()   # |SiLU''| ≤ 0.5
    assert np.abs(np.asarray(j_ours) - np.asarray(j_ref)).max() <= jbound
    # the backward pass keeps x, the parameters and the [B, C] sums; the plain form stores whole activations
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        jax.ad_checkpoint.print_saved_residuals(lambda p, x: ours.apply(p, x), params, x)
    big = [r for r in buf.getvalue().splitlines() if r.startswith(("f32[3,8,8,16]", "f32[3,64,16]"))]
    assert (big == ["f32[3,8,8,16] from the argument x"]) == sums, big


def test_group_norm_epsilon_is_added_to_the_variance(sums):
    """At variance ≈ ε the output scales by 1/√(σ² + ε): a wrong ε (or none) moves it by ≥ 20 %, far above the
    float32 error (relative n·u·few = 1e-4 at mean 0, no cancellation in E[x²] − E[x]²)."""
    x = _x((2, 8, 8, 16), 4, mean=0.0, std=1e-3)
    eps = 1e-6
    params = {"params": {"scale": jnp.ones(16), "bias": jnp.zeros(16)}}
    y = np.asarray(fl.GroupNorm(4, eps).apply(params, x))
    y64 = _group_norm64(x, 4, 1.0, 0.0, eps)
    assert np.abs(y - y64).max() <= 1e-3 * np.abs(y64).max()
    assert np.abs(_group_norm64(x, 4, 1.0, 0.0, 1e-5) - y64).max() > 0.2 * np.abs(y64).max()


def test_group_norm_bfloat16_keeps_float32_statistics(sums):
    x = _x((2, 8, 8, 16))
    ours, ref = fl.GroupNorm(4), nn.GroupNorm(num_groups=4, epsilon=1e-6)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), ours.init(jax.random.PRNGKey(0), x))
    y = ours.apply(params, x.astype(jnp.bfloat16))
    y_ref = ref.apply(params, x.astype(jnp.bfloat16))
    assert y.dtype == y_ref.dtype == jnp.bfloat16
    # both normalise in float32 and round once to bfloat16 (2⁻⁸ relative): at most one bfloat16 ulp apart
    diff = np.abs(np.asarray(y, np.float32) - np.asarray(y_ref, np.float32))
    assert np.all(diff <= 2.0 ** -7 * np.maximum(np.abs(np.asarray(y_ref, np.float32)), 1.0))


def test_group_norm_refuses_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="num_groups=4"):
        fl.GroupNorm(4).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 6)))


def test_conv_has_flax_parameters_and_matches_flax_conv(sums):
    x = _x((2, 8, 8, 16), mean=0.0, std=1.0)
    for k, pad in (((3, 3), 1), ((1, 1), 0)):
        ours, ref = fl.Conv(8, k, pad), nn.Conv(8, k, padding=pad)
        params = ours.init(jax.random.PRNGKey(0), x)
        ref_params = ref.init(jax.random.PRNGKey(0), x)
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), params, ref_params))
        params = jax.tree_util.tree_map(lambda p: p + 0.1, params)          # non-zero bias
        cot = jnp.asarray(_x((2, 8, 8, 8), 2, 0.0, 1.0))
        # output: sums of 9·16 = 144 products of size ≤ 5·0.6; gradients: ≤ 2·64 = 128-term sums of size ≤ 5·5
        np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=0, atol=144 * EPS32 * 3 * 4)
        loss = lambda m: (lambda p, x: jnp.sum(m.apply(p, x) * cot))
        g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
        g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
        for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
            np.testing.assert_allclose(a, b, rtol=0, atol=144 * EPS32 * 25 * 8)
        # forward mode: tangents in parameters and input, each alone and together
        tp = jax.tree_util.tree_map(lambda p: jnp.asarray(_x(p.shape, 4, 0.0, 0.1)), params)
        tx = jnp.asarray(_x(x.shape, 5, 0.0, 1.0))
        # (closures for one tangent alone, so the rule receives the other as a symbolic zero)
        jvps = lambda m: (jax.jvp(m.apply, (params, x), (tp, tx))[1],
                          jax.jvp(lambda p: m.apply(p, x), (params,), (tp,))[1],
                          jax.jvp(lambda x: m.apply(params, x), (x,), (tx,))[1],
                          jax.vmap(lambda t: jax.jvp(lambda x: m.apply(params, x), (x,), (t,))[1])(tx[None]
                                                                                                 .repeat(2, 0)))
        for a, b in zip(jvps(ours), jvps(ref)):
            # two 144-term sums of size ≤ 5·0.6 plus the bias tangent
            np.testing.assert_allclose(a, b, rtol=0, atol=2 * 144 * EPS32 * 3 * 4)


def test_per_channel_add_gradients_are_the_float64_sums(sums):
    x = jnp.asarray(_x((4, 8, 8, 16)))
    v, bias = jnp.asarray(_x((4, 16), 1)), jnp.asarray(_x((16,), 2))
    cot = _x((4, 8, 8, 16), 3, 0.0, 1.0)
    out, vjp = jax.vjp(lambda v, b: fl.add_bias(fl.add_per_example(x, v), b), v, bias)
    np.testing.assert_array_equal(out, x + v[:, None, None, :] + bias)          # one rounding each, same order
    dv, db = vjp(jnp.asarray(cot))
    c64 = cot.astype(np.float64)
    # 64 (per example) and 256 (per channel) terms of size ≤ 6
    np.testing.assert_allclose(dv, c64.sum((1, 2)), rtol=0, atol=64 * EPS32 * 6)
    np.testing.assert_allclose(db, c64.sum((0, 1, 2)), rtol=0, atol=256 * EPS32 * 6)


@pytest.mark.parametrize("fused_silu", [False, True])
def test_matmul_sums_leave_no_pixel_reduction_in_the_cpu_gradient(fused_silu):
    """The premise of the module: with matmul sums, the gradient of GroupNorm → conv has no reduce over the
    batch and pixel axes of the activation (XLA:CPU's slow strided loops); with plain broadcasts it has."""
    x = jnp.asarray(_x((8, 16, 16, 32)))

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = fl.GroupNorm(8, silu=True)(x) if fused_silu else nn.silu(fl.GroupNorm(8)(x))
            return fl.Conv(32, (3, 3), 1)(h)

    def big_reductions(matmul):
        with fl.forms(matmul):
            params = Block().init(jax.random.PRNGKey(0), x)
            grad = jax.jit(jax.grad(lambda p: jnp.sum(Block().apply(p, x) ** 2)))
            hlo = grad.lower(params).compile().as_text()
        sizes = {m[0]: int(np.prod([int(d) for d in m[1].split(",") if d]))
                 for m in re.findall(r"%([\w.\-]+) = f32\[([\d,]*)\]", hlo)}
        operands = re.findall(r" (?:reduce|reduce-window)\(%([\w.\-]+),", hlo)
        return [o for o in operands if sizes.get(o, 0) >= x.size]       # reduces that read a whole activation
    assert big_reductions(True) == []
    assert big_reductions(False) != []


def test_dropout_rate_rounding_and_exact_expectation():
    class Drop(nn.Module):
        rate: float

        @nn.compact
        def __call__(self, x, ids):
            return dropout(self, x, self.rate, True, ids)
    x = jnp.ones((16, 32, 32, 64))
    ids = jnp.arange(16)
    y = np.asarray(Drop(0.13).apply({}, x, ids, rngs={"dropout": jax.random.PRNGKey(0)}))
    threshold = round(0.13 * 65536)
    assert set(np.unique(y)) == {0.0, np.float32(65536 / (65536 - threshold))}
    drop = float((y == 0).mean())
    n = y.size                                    # 1,048,576 Bernoulli(p) draws: 6 standard deviations
    assert abs(drop - threshold / 65536) <= 6 * np.sqrt(0.13 * 0.87 / n)
    assert np.all(np.asarray(Drop(1.0).apply({}, x, ids, rngs={"dropout": jax.random.PRNGKey(0)})) == 0)
    y2 = np.asarray(Drop(0.13).apply({}, x, ids[::-1], rngs={"dropout": jax.random.PRNGKey(0)}))
    np.testing.assert_array_equal(y2, y[::-1])    # an example's mask follows its id


def test_materialize_is_the_identity_in_value_gradient_and_jvp(sums):
    x = jnp.asarray(np.array([[1.5, -0.0, np.inf], [np.nan, 3e30, -2.0]], np.float32))
    y = fl.materialize(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    assert np.signbit(np.asarray(y)[0, 1])                             # −0 stays −0 (no arithmetic on x)
    inf_first = jnp.asarray([np.inf, 1.0], jnp.float32)                # the probe's other branch (x·1)
    np.testing.assert_array_equal(np.asarray(fl.materialize(inf_first)), np.asarray(inf_first))
    z = jnp.asarray(_x((2, 4, 4, 3)))
    cot = jnp.asarray(_x((2, 4, 4, 3), 1))
    np.testing.assert_array_equal(jax.vjp(fl.materialize, z)[1](cot)[0], cot)
    np.testing.assert_array_equal(jax.jvp(fl.materialize, (z,), (cot,))[1], cot)


def test_materialize_survives_xla_cpu_as_a_conditional():
    """The premise: XLA:CPU keeps the conditional (it drops lax.optimization_barrier before fusion), in the
    forward and in the transposed (gradient) computation."""
    with fl.forms(True):
        f = lambda x: jnp.sum(jnp.sin(fl.materialize(jnp.cos(x) * 2.0)) ** 2)
        x = jnp.ones((4, 8), jnp.float32)
        assert jax.jit(f).lower(x).compile().as_text().count(" conditional(") == 1
        assert jax.jit(jax.grad(f)).lower(x).compile().as_text().count(" conditional(") == 2
