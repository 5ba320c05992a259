"""The C++ weight-gradient kernel (models/conv_weight_grad.cc) and the primitive that makes it the transpose
of a convolution's weight term (models/conv_weight_grad.py), against float64 sums written here.

Bound: a float32 sum of n products, in any order and with or without FMA, is within (n + 1)·2⁻²⁴·Σ|terms|
of the exact sum (γ bound: one rounding per product and per addition). The kernel's sums have n = N·Ho·Wo
terms (fewer at the borders); the partial sums of the threads add at most one rounding per thread, inside
the same bound since n counts every term. Where this machine has no C++ compiler the tests check the
fallback instead (XLA's weight gradient), so they assert something real either way.
"""
import ctypes
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro.models import conv_weight_grad as cw
from jaxrepro.models import cpu_kernels as ck
from jaxrepro.models import fast_layers as fl
from test_cpu_kernels import _ref_conv_grads

U = 2.0 ** -24
HAVE_COMPILER = ck._compiler() is not None


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _ref_dw(x, g, kh, kw, ph, pw):
    """float64 (dw, Σ|terms|) [KH, KW, Ci, Co] of Σ conv(x, w)·g for a stride-1 convolution."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = g.shape[1:3]
    dw = np.zeros((kh, kw, x.shape[-1], g.shape[-1]))
    mag = np.zeros_like(dw)
    for a in range(kh):
        for b in range(kw):
            win = xp[:, a:a + ho, b:b + wo]
            dw[a, b] = np.einsum("nhwi,nhwo->io", win, g)
            mag[a, b] = np.einsum("nhwi,nhwo->io", np.abs(win), np.abs(g))
    return dw, mag


def _assert_within_bound(got, x, g, kh, kw, ph, pw):
    ref, mag = _ref_dw(x, g, kh, kw, ph, pw)
    n = g.shape[0] * g.shape[1] * g.shape[2]
    assert got.shape == ref.shape
    assert np.all(np.abs(np.asarray(got, np.float64) - ref) <= (n + 1) * U * mag + 1e-30)


def _call(target, x, g, kh, kw, ph, pw):
    out = jax.ShapeDtypeStruct((kh, kw, x.shape[-1], g.shape[-1]), jnp.float32)
    return np.asarray(jax.jit(lambda x, g: jax.ffi.ffi_call(target, out)(x, g, ph=np.int64(ph),
                                                                              pw=np.int64(pw)))(x, g))


# (N, H, W, Ci, Co, KH, KW, ph, pw): channel counts off every block size (R = 4 or 6 rows, 4–16-float vectors,
# 64-channel column blocks, a scalar tail), one image (one task), asymmetric kernels and paddings, and a
# kernel wider than the image
CASES = [(3, 5, 7, 3, 5, 3, 3, 1, 1), (2, 6, 6, 7, 17, 3, 1, 1, 0), (4, 8, 8, 13, 64, 3, 3, 1, 1),
         (2, 4, 4, 5, 33, 1, 1, 0, 0), (1, 3, 3, 2, 16, 3, 3, 2, 2), (5, 9, 9, 64, 128, 3, 3, 0, 0),
         (3, 4, 6, 6, 80, 3, 3, 1, 1), (2, 2, 3, 4, 16, 5, 5, 2, 2)]


@pytest.mark.parametrize("case", CASES)
def test_kernel_against_float64(case):
    """The kernel's dw (the variant this CPU picks) within the γ bound of float64 sums."""
    n, h, w, ci, co, kh, kw, ph, pw = case
    x = _x((n, h, w, ci))
    g = _x((n, h + 2 * ph - kh + 1, w + 2 * pw - kw + 1, co), 1)
    if not ck.available():
        assert not HAVE_COMPILER or ck._state["why"]
        got = cw.weight_grad(jnp.asarray(x), jnp.asarray(g), (kh, kw), ph) if ph == pw else None
        if got is not None:
            _assert_within_bound(got, x, g, kh, kw, ph, pw)                 # the fallback: XLA's
        return
    _assert_within_bound(_call(ck.DW_TARGET, x, g, kh, kw, ph, pw), x, g, kh, kw, ph, pw)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(l for l in f if l.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return None


def test_the_default_build_picks_the_widest_path_this_cpu_has():
    """AVX-512 where /proc/cpuinfo lists avx512f, AVX2 where avx2 and fma, plain vectors otherwise: so the
    test above checked the path this CPU runs, named here."""
    flags = _cpu_flags()
    if not ck.available() or flags is None:
        assert not ck.available() or flags is None
        return
    want = 512 if "avx512f" in flags else 256 if {"avx2", "fma"} <= flags else 0
    assert ck._state["lib"].JaxreproConvWeightGradIsa() == want


@pytest.mark.parametrize("defines,isa", [(("JAXREPRO_NO_AVX512",), (256, 0)), (("JAXREPRO_NO_AVX2",), (0,))])
def test_the_other_instruction_set_paths(tmp_path, defines, isa):
    """The AVX2 path (built without the AVX-512 one; plain vectors where the CPU lacks AVX2) and the plain
    path (built with JAXREPRO_NO_AVX2, as on non-x86 CPUs), each against float64 sums."""
    if not HAVE_COMPILER:
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            ck.build(tmp_path, defines=defines)
        return
    lib = ctypes.cdll.LoadLibrary(str(ck.build(tmp_path, defines=defines)))
    assert lib.JaxreproConvWeightGradIsa() in isa
    name = f"{ck.DW_TARGET}_test_{'_'.join(defines).lower()}"
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(lib.JaxreproConvWeightGrad), platform="cpu")
    for n, h, w, ci, co, kh, kw, ph, pw in CASES:
        x, g = _x((n, h, w, ci)), _x((n, h + 2 * ph - kh + 1, w + 2 * pw - kw + 1, co), 1)
        _assert_within_bound(_call(name, x, g, kh, kw, ph, pw), x, g, kh, kw, ph, pw)


def _ref_conv(x, w, pad):
    """float64 (conv(x, w), Σ|terms|), stride 1, `pad` pixels each side."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    y = sum(np.einsum("nhwi,io->nhwo", xp[:, a:a + ho, b:b + wo], w[a, b]) for a in range(kh) for b in range(kw))
    mag = sum(np.einsum("nhwi,io->nhwo", np.abs(xp[:, a:a + ho, b:b + wo]), np.abs(w[a, b]))
              for a in range(kh) for b in range(kw))
    return y, mag


def _assert_input_grad_within_bound(got, g, u, pad, shape):
    """got ≈ ∂/∂x Σ conv(x, u)·g [N, H, W, Ci]: float64 sums of at most KH·KW·Co terms per entry, γ bound."""
    want, _, mag, _ = _ref_conv_grads(np.zeros(shape), u, g, pad)      # dx does not depend on x
    kh, kw, _, co = u.shape
    err = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(err <= (kh * kw * co + 1) * U * mag + 1e-30)


def test_mismatched_shapes_are_refused_by_the_kernel():
    if not ck.available():
        return
    x, g = _x((2, 5, 5, 3)), _x((2, 4, 5, 16), 1)                        # Ho should be 5 for a 3×3, pad 1
    with pytest.raises(Exception, match="conv_weight_grad: shapes do not match a stride-1 convolution"):
        _call(ck.DW_TARGET, x, g, 3, 3, 1, 1)


def test_routing():
    """The kernel for float32 with whole 16-channel vectors on the CPU; XLA for 3 output channels or bfloat16."""
    x = jnp.zeros((2, 4, 4, 8))
    assert cw.kernel_applies(x, jnp.zeros((2, 4, 4, 32))) == ck.available()
    assert not cw.kernel_applies(x, jnp.zeros((2, 4, 4, 3)))
    assert not cw.kernel_applies(x.astype(jnp.bfloat16), jnp.zeros((2, 4, 4, 32), jnp.bfloat16))


@pytest.mark.parametrize("shape,pad", [((6, 6, 6, 16), 1), ((3, 5, 7, 5), 0)])
def test_conv_cpu_derivatives_through_the_kernel(shape, pad):
    """conv_cpu with 16 output channels: reverse-mode weight and input gradients, the weight gradient per
    example under vmap, and forward-mode derivatives of the weight gradient along x and w (second order,
    through the kernel's JVP and the primitive's transpose in x) — each against float64 sums."""
    x, w = jnp.asarray(_x(shape)), jnp.asarray(_x((3, 3, shape[-1], 16), 1))
    y = cw.conv(x, w, pad)
    g, v = jnp.asarray(_x(y.shape, 2)), jnp.asarray(_x(shape, 3))
    loss = lambda x, w: jnp.sum(fl.conv_cpu(x, w, pad) * g)          # linear in each: derivatives are sums
    dx, dw = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    _assert_within_bound(dw, x, g, 3, 3, pad, pad)
    ref_dx = jax.vjp(lambda x: cw.conv(x, w, pad), x)[1](g)[0]         # XLA's input gradient: same path as before
    assert np.array_equal(np.asarray(dx), np.asarray(ref_dx))
    per = jax.jit(jax.vmap(lambda x, g: jax.grad(lambda w: jnp.sum(fl.conv_cpu(x[None], w, pad) * g[None]))(w)))
    got = per(x, g)
    for i in range(shape[0]):
        _assert_within_bound(got[i], x[i:i + 1], g[i:i + 1], 3, 3, pad, pad)
    _, ddw = jax.jvp(lambda x: jax.grad(loss, 1)(x, w), (x,), (v,))          # = dw with v in place of x
    _assert_within_bound(ddw, v, g, 3, 3, pad, pad)
    # d/dε of dL/dx at w + ε·u, L = Σ conv·g: the input gradient with u for w, XLA's on both sides (exact)
    u = jnp.asarray(_x(w.shape, 4))
    _, ddx = jax.jvp(lambda w: jax.grad(loss, 0)(x, w), (w,), (u,))
    assert np.array_equal(np.asarray(ddx), np.asarray(jax.vjp(lambda x: cw.conv(x, u, pad), x)[1](g)[0]))
    # forward mode along several weight directions at once (vmap of the primitive: XLA's batched convolution)
    us = jnp.stack([u, -2 * u])
    got_f = jax.jit(jax.vmap(lambda t: jax.jvp(lambda w: fl.conv_cpu(x, w, pad), (w,), (t,))[1]))(us)
    for i in range(2):
        want, mag = _ref_conv(x, us[i], pad)
        assert np.all(np.abs(np.asarray(got_f[i], np.float64) - want) <= (9 * shape[-1] + 1) * U * mag + 1e-30)
    # reverse mode through a forward-mode weight derivative (the primitive transposed in x): for
    # h(x) = Σ jvp_w[conv_cpu(x, ·)](u)·g = Σ conv(x, u)·g, ∂h/∂x is XLA's input gradient with u for w
    h = lambda x: jnp.sum(jax.jvp(lambda w: fl.conv_cpu(x, w, pad), (w,), (u,))[1] * g)
    _assert_input_grad_within_bound(jax.jit(jax.grad(h))(x), g, u, pad, shape)
    # second order, both slots: ∂/∂x ⟨dL/dw, u⟩ for L = ½Σ conv(x, w)² is conv_T(y, u) + conv_T(conv(x, u), w),
    # y = conv(x, w): chains of 9·Ci and 9·Co products, each side within (9·Ci + 9·Co + 2)·u·Σ|terms|
    quad = lambda x, w, conv: 0.5 * jnp.sum(conv(x, w) ** 2)
    d2 = lambda conv, x, w, u: jax.grad(lambda x: jnp.vdot(jax.grad(quad, 1)(x, w, conv), u))(x)
    got2 = jax.jit(partial(d2, lambda x, w: fl.conv_cpu(x, w, pad)))(x, w, u)
    plain = lambda x, w: cw.conv(x, w, pad)
    ref2, mag = d2(plain, x, w, u), d2(plain, jnp.abs(x), jnp.abs(w), jnp.abs(u))
    n2 = 9 * shape[-1] + 9 * 16 + 2
    assert np.all(np.abs(np.asarray(got2) - np.asarray(ref2)) <= 2 * n2 * U * np.asarray(mag) * 1.01)
    if ck.available() and jax.default_backend() == "cpu":
        assert ck.DW_TARGET in jax.jit(jax.grad(loss, 1)).lower(x, w).compile().as_text()


def test_inside_shard_map_the_convolutions_stay_xla(monkeypatch):
    """In jax.shard_map a value varying over a manual axis keeps that mark through conv_cpu's derivatives
    (FFI calls would drop it), so the gradient equals the plain convolution's — on this process's devices."""
    from jax.sharding import Mesh, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()[:1]), ("i",))
    x, w, g = jnp.asarray(_x((4, 5, 5, 3))), jnp.asarray(_x((3, 3, 3, 16), 1)), jnp.asarray(_x((4, 5, 5, 16), 2))
    def grad(conv):
        local = lambda x, w, g: jax.lax.psum(jnp.sum(conv(x, w) * g), "i")
        loss = lambda w: jax.shard_map(local, mesh=mesh, in_specs=(P("i"), P(), P("i")), out_specs=P())(x, w, g)
        return jax.jit(jax.grad(loss))(w)
    got = grad(lambda x, w: fl.conv_cpu(x, w, 1))
    assert not cw.varying(x, w)                                        # outside shard_map: nothing varies
    _assert_within_bound(got, x, g, 3, 3, 1, 1)
