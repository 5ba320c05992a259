"""fast_layers' CPU forms beyond test_fast_layers.py: Conv(split=k), 1×1 convolutions as matmuls, GroupNorm's
group matrix, and the tangent-only fusion barrier — values and derivatives against independent references
(flax's nn.Conv, jnp.repeat, float64 sums, the same function without the barrier), plus the premises on
XLA:CPU's compiled HLO that make each form worth having.

Error bounds as in test_fast_layers.py: a float32 sum of n terms of size ≤ s is off by ≤ n·2⁻²⁴·n·s in the
worst case (plus one rounding per product); two such computations in different orders differ by at most twice
that, which is the tolerance used below (2·n²·u·s), not an observed error.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro.models import fast_layers as fl

EPS32 = 2.0 ** -24


@pytest.fixture(params=[True, False], ids=["cpu_forms", "plain"])
def forms(request):
    with fl.forms(request.param):
        yield request.param


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("kernel,pad,split", [((1, 1), 0, 3), ((3, 3), 1, 2)])
def test_conv_split_returns_the_interleaved_channels_of_flax_conv(forms, kernel, pad, split):
    """Part i is channels i, i+k, i+2k, … of nn.Conv with the same parameters, in value and in gradient."""
    x = jnp.asarray(_x((2, 6, 6, 8)))
    ours, ref = fl.Conv(6, kernel, pad, split=split), nn.Conv(6, kernel, padding=pad)
    params = ours.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), params,
                                                         ref.init(jax.random.PRNGKey(0), x)))
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    parts, full = ours.apply(params, x), ref.apply(params, x)
    assert len(parts) == split
    n = kernel[0] * kernel[1] * 8                                      # terms per output, each |x·w| ≤ 4·1.1
    for i, part in enumerate(parts):
        np.testing.assert_allclose(part, full[..., i::split], rtol=0, atol=2 * n * n * EPS32 * 4.4)
    cot = [jnp.asarray(_x(p.shape, 3 + i)) for i, p in enumerate(parts)]
    cot_full = jnp.stack(cot, -1).reshape(full.shape)                  # channel j·k + i ← cot[i][..., j]
    g_ours = jax.grad(lambda p, x: sum(jnp.sum(a * c) for a, c in zip(ours.apply(p, x), cot)), (0, 1))(params, x)
    g_ref = jax.grad(lambda p, x: jnp.sum(ref.apply(p, x) * cot_full), (0, 1))(params, x)
    m = 2 * 6 * 6 * 6                                                  # ≤ 432 terms of size ≤ 4·4
    for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2 * m * m * EPS32 * 16)


def test_conv_split_refuses_features_that_do_not_divide():
    with pytest.raises(ValueError, match="7 features do not split into 3"):
        fl.Conv(7, (1, 1), split=3).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)))


def test_cpu_1x1_weight_gradient_is_a_matmul_without_permuting_the_activation():
    """The premise: XLA:CPU runs a 1×1 convolution's weight gradient as a convolution over the whole image
    after permuting x and the output gradient to batch-minor layouts; as a matmul on [B·H·W, C] it is one
    transposed-operand dot and nothing of activation size is permuted."""
    x = jnp.asarray(_x((8, 16, 16, 32)))

    def compiled(cpu):
        with fl.forms(cpu):
            conv = fl.Conv(24, (1, 1))
            params = conv.init(jax.random.PRNGKey(0), x)
            return jax.jit(jax.grad(lambda p: jnp.sum(conv.apply(p, x) ** 2))).lower(params).compile().as_text()
    cpu, plain = compiled(True), compiled(False)

    def permutations(hlo):              # transposes or copies of ≥ one activation's elements, any rank/layout
        shapes = re.findall(r"= f32\[([\d,]*)\]\S* (?:transpose|copy)\(", hlo)
        return [s for s in shapes if np.prod([int(d) for d in s.split(",") if d]) >= 8 * 16 * 16 * 24]
    assert " convolution(" not in cpu and permutations(cpu) == []
    assert re.findall(r" convolution\(.*window=\{size=16x16", plain) and permutations(plain) != []


def test_cpu_1x1_conv_takes_an_empty_batch(forms):
    conv = fl.Conv(4, (1, 1))
    x = jnp.zeros((0, 3, 3, 2))
    assert conv.apply(conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 2))), x).shape == (0, 3, 3, 4)


@pytest.mark.parametrize("c,g", [(16, 4), (128, 32), (12, 3)])
def test_group_ops_repeat_exactly_and_sum_like_float64(forms, c, g):
    """The repeat is exact (one term per output); the group sum is a float32 sum of c/g terms."""
    group_sum, repeat = fl._group_ops(g, c)
    u = _x((5, g), 1)
    np.testing.assert_array_equal(repeat(jnp.asarray(u)), np.repeat(u, c // g, axis=1))   # one term each: exact
    v = _x((5, c), 2)
    ref = v.astype(np.float64).reshape(5, g, -1).sum(-1)
    n = c // g                                                                             # terms, |v| ≤ 5
    np.testing.assert_allclose(group_sum(jnp.asarray(v)), ref, rtol=0, atol=2 * n * n * EPS32 * 5)


def test_materialize_tangent_is_the_identity_to_second_order():
    x = jnp.asarray(np.array([[1.5, -0.0, np.inf], [np.nan, 3e30, -2.0]], np.float32))
    y = fl.materialize_tangent(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    assert np.signbit(np.asarray(y)[0, 1])
    z, t = jnp.asarray(_x((3, 4))), jnp.asarray(_x((3, 4), 1))
    np.testing.assert_array_equal(jax.jvp(fl.materialize_tangent, (z,), (t,))[1], t)
    np.testing.assert_array_equal(jax.vjp(fl.materialize_tangent, z)[1](t)[0], t)
    np.testing.assert_array_equal(jax.vmap(lambda t: jax.jvp(fl.materialize_tangent, (z,), (t,))[1])(t[None]), t[None])
    np.testing.assert_array_equal(jax.jvp(fl.materialize_tangent, (jnp.zeros((0, 3)),), (jnp.zeros((0, 3)),))[1],
                                  np.zeros((0, 3)))
    for first in (np.inf, 3e30):         # probe == probe + 1: the other branch (v·1) of the barrier
        z1 = z.at[0, 0].set(first)
        np.testing.assert_array_equal(jax.jvp(fl.materialize_tangent, (z1,), (t,))[1], t)
        np.testing.assert_array_equal(jax.vjp(fl.materialize_tangent, z1)[1](t)[0], t)
    f = lambda g: (lambda x: jnp.sum(jnp.sin(g(x) * x) ** 2))
    # the barrier only routes values: the same float32 operations in the same order, so equal bit for bit
    np.testing.assert_array_equal(jax.hessian(f(fl.materialize_tangent))(z[0]), jax.hessian(f(lambda v: v))(z[0]))
    np.testing.assert_array_equal(jax.grad(f(fl.materialize_tangent))(z), jax.grad(f(lambda v: v))(z))


def test_group_norm_backward_computes_its_incoming_gradient_once_on_the_cpu():
    """The premise: with the barrier, XLA:CPU keeps a conditional in GroupNorm's backward only (the forward
    has none), so the gradient w.r.t. the normalised values is one buffer instead of being recomputed in each
    of its consumers (the two sums and dx)."""
    x = jnp.asarray(_x((8, 16, 16, 32)))

    def conditionals(cpu, grad):
        with fl.forms(cpu):
            gn = fl.GroupNorm(8, silu=True)
            params = gn.init(jax.random.PRNGKey(0), x)
            loss = lambda p, x: jnp.sum(gn.apply(p, x) ** 2)
            f = jax.grad(loss, (0, 1)) if grad else loss
            return jax.jit(f).lower(params, x).compile().as_text().count(" conditional(")
    assert conditionals(True, grad=False) == 0
    assert conditionals(True, grad=True) >= 1
    assert conditionals(False, grad=True) == 0


def test_group_norm_per_channel_affine_is_computed_once_per_example_on_the_cpu():
    """The premise of the group matrix: on the CPU the [B, G] → [B, C] repeat is a dot (XLA computes the
    per-channel scale and shift once), where jnp.repeat is fused into the elementwise pass as index arithmetic
    on every activation element."""
    x = jnp.asarray(_x((8, 16, 16, 32)))

    def repeat_dots(cpu):
        with fl.forms(cpu):
            gn = fl.GroupNorm(8, silu=True)
            params = gn.init(jax.random.PRNGKey(0), x)
            hlo = jax.jit(gn.apply).lower(params, x).compile().as_text()
        return re.findall(r"f32\[8,32\]\S* dot\(", hlo)
    assert len(repeat_dots(True)) >= 1
    assert repeat_dots(False) == []


def test_group_norm_overflowing_group_leaves_the_other_groups_as_the_plain_form():
    """x² overflowing in one group (s2 = inf there, rstd = 0) must not reach the other groups through the
    CPU form's group matrix (0·inf = NaN): the CPU and plain forms agree to float32 roundings everywhere."""
    x = _x((2, 4, 4, 16)) + 1.0
    x[0, 0, 0, 0] = 1e20
    outs = []
    for cpu in (True, False):
        with fl.forms(cpu):
            gn = fl.GroupNorm(4, silu=True)
            outs.append(np.asarray(gn.apply(gn.init(jax.random.PRNGKey(0), x), jnp.asarray(x))))
    assert np.isfinite(outs[0]).all() and np.isfinite(outs[1]).all()
    # 4·4·4 = 64-term sums of |x| ≤ 6 (groups without the outlier), normalised values ≤ 5, SiLU′ ≤ 1.1
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=2 * 64 * 64 * EPS32 * 6)


def _duplicated_fusions(hlo, min_elements):
    """Groups of ≥ 2 activation-sized fusions in the ENTRY computation that read the same activation-sized
    operands and compute the same operations (the same multiset of opcodes, reshapes aside): one value
    computed again for each consumer (XLA:CPU duplicates a fusion per output shape)."""
    entry = hlo[hlo.index("\nENTRY"):]
    size = {}
    for name, dims in re.findall(r"^\s*%([\w.\-]+) = \w+\[([\d,]*)\]", entry, re.M):
        size[name] = int(np.prod([int(d) for d in dims.split(",") if d]))
    groups = {}
    for name, operands, called in re.findall(
            r"^\s*%([\w.\-]+) = \w+\[[\d,]*\]\S* fusion\(([^)]*)\).*?calls=%([\w.\-]+)", entry, re.M):
        big = tuple(sorted(o for o in re.findall(r"%([\w.\-]+)", operands) if size.get(o, 0) >= min_elements))
        start = hlo.index(f"%{called} ")
        body = hlo[start:hlo.index("\n}", start)]
        ops = tuple(sorted(op for op in re.findall(r"= \S+ (\w[\w-]*)\(", body)
                           if op not in ("parameter", "bitcast", "broadcast", "reshape", "constant")))
        if size[name] >= min_elements and len(big) >= 2:
            groups.setdefault((big, ops), []).append(name)
    return [v for v in groups.values() if len(v) > 1]


def _gradient_duplicates(block, x, emb):
    """_duplicated_fusions of the CPU-form gradient of sum(block(x, emb)²) w.r.t. parameters and x."""
    with fl.forms(True):
        params = block.init(jax.random.PRNGKey(0), x, emb)
        loss = lambda p, x: jnp.sum(block.apply(p, x, emb) ** 2)
        hlo = jax.jit(jax.grad(loss, (0, 1))).lower(params, x).compile().as_text()
    return _duplicated_fusions(hlo, x.shape[0] * x.shape[1] * x.shape[2] * 32)     # one 32-channel activation


def test_group_norm_input_gradient_is_computed_once_on_the_cpu(monkeypatch):
    """The premise of GroupNorm's input barrier, in a UNet block's pattern (conv → per-example add → GroupNorm
    + SiLU): the input's gradient feeds the conv's input gradient as [B,H,W,C] and the per-example sums as
    [B,H·W,C]; without the barrier XLA:CPU computes GroupNorm's dx once per shape (in DDPM++'s step: 31
    such pairs, A/B −4 % step time)."""
    x, emb = jnp.asarray(_x((8, 16, 16, 16))), jnp.asarray(_x((8, 32), 1))

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, emb):
            h = fl.add_per_example(fl.Conv(32, (3, 3), 1)(x), nn.Dense(32)(emb))
            return fl.GroupNorm(8, silu=True)(h)

    assert _gradient_duplicates(Block(), x, emb) == []
    monkeypatch.setattr(fl, "materialize_tangent", lambda v: v)        # positive control: no barriers
    assert _gradient_duplicates(Block(), x, emb) != []


def test_attention_block_residual_is_computed_once_on_the_cpu(monkeypatch):
    """The premise of the barrier before a UNetBlock's attention: the residual (h + skip)·√½ is read by norm2
    and by the attention's residual add; without the barrier XLA:CPU recomputes it in both, forward and
    backward (in DDPM++'s step: 4 groups of 4 fusions at 16×16)."""
    from jaxrepro.models import ddpmpp
    x, emb = jnp.asarray(_x((8, 16, 16, 32))), jnp.asarray(_x((8, 64), 1))

    block = ddpmpp.UNetBlock(32, attention=True)
    assert _gradient_duplicates(block, x, emb) == []
    monkeypatch.setattr(ddpmpp, "materialize", lambda v: v)        # positive control: no barriers
    assert _gradient_duplicates(block, x, emb) != []
