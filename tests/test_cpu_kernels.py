"""The C++ NHWC→CHWN kernel (models/cpu_kernels.py) and the convolution whose weight derivative uses it.

The permutation is exact, so its output must equal numpy's transpose bit for bit. The convolution's
derivatives are checked against float64 sums written here: a float32 sum of n products, in any order, is
within (n + 1)·2⁻²⁴·Σ|terms| of the exact sum (γ bound, one rounding per product and per addition), the
tolerance used below. Where this machine has no C++ compiler the tests check the fallback instead (XLA's
transpose, and a warning saying why), so they assert something real either way.
"""
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrepro.models import cpu_kernels as ck
from jaxrepro.models import fast_layers as fl

U = 2.0 ** -24
HAVE_COMPILER = ck._compiler() is not None


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _hlo(f, *args):
    return jax.jit(f).lower(*args).compile().as_text()


def test_the_kernel_is_built_where_a_compiler_exists(tmp_path, caplog):
    """A fresh build in an empty directory; a second call finds it instead of rebuilding."""
    if not HAVE_COMPILER:                      # no compiler here: the error names the missing compiler
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            ck.build(tmp_path)
        with caplog.at_level(logging.WARNING):
            ck._state.update(ready=None)
            assert not ck.available()
        assert "XLA's (slower) transpose is used instead" in caplog.text
        return
    lib = ck.build(tmp_path)
    assert lib.parent == tmp_path and lib.suffix == ".so" and lib.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [lib.name]           # no temporary file left behind
    mtime = lib.stat().st_mtime_ns
    assert ck.build(tmp_path) == lib and lib.stat().st_mtime_ns == mtime
    assert ck.available()


def test_a_failed_build_leaves_no_partial_library(tmp_path, monkeypatch):
    """A compiler error is raised with its message, and nothing half-written stays in the cache."""
    out = tmp_path / "cache"
    if not HAVE_COMPILER:
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            ck.build(out)
        return
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(ck, "SOURCE", bad)
    with pytest.raises(RuntimeError, match="failed"):
        ck.build(out)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("shape", [(64, 32, 32, 64), (16, 5, 7, 24), (9, 3, 3, 13), (3, 1, 1, 8), (1, 4, 4, 1),
                                   (2, 3, 5, 7, 11)])
def test_permutation_is_exact(shape):
    """[..., N, H, W, C] → [..., C, H, W, N] equals numpy's transpose exactly, edges (N, C not multiples of 8,
    H·W not a multiple of the 16-pixel block) and a leading batch dimension included."""
    x = jnp.asarray(_x(shape))
    r = len(shape)
    want = np.transpose(np.asarray(x), (*range(r - 4), r - 1, r - 3, r - 2, r - 4))
    assert np.array_equal(np.asarray(jax.jit(ck.nhwc_to_chwn)(x)), want)
    hlo = _hlo(ck.nhwc_to_chwn, x)
    assert (ck.TARGET in hlo) == ck.available()                        # the kernel ran wherever it is built
    xb = jnp.stack([x, -x, 2 * x])                                      # vmap: one more leading dimension
    got = jax.jit(jax.vmap(ck.nhwc_to_chwn))(xb)
    assert np.array_equal(np.asarray(got), np.stack([want, -want, 2 * want]))


def test_fallback_is_xla_transpose(monkeypatch):
    """With the kernel unavailable (or off), the same values come from XLA's transpose, no custom call."""
    monkeypatch.setitem(ck._state, "ready", False)
    x = jnp.asarray(_x((6, 4, 5, 10)))
    assert ck.TARGET not in _hlo(ck.nhwc_to_chwn, x)
    assert np.array_equal(np.asarray(ck.nhwc_to_chwn(x)), np.transpose(np.asarray(x), (3, 1, 2, 0)))


def test_off_switch(monkeypatch):
    monkeypatch.setitem(ck._state, "ready", None)
    monkeypatch.setenv("JAXREPRO_CPU_KERNELS", "0")
    assert not ck.available() and ck._state["why"] == "JAXREPRO_CPU_KERNELS=0"
    monkeypatch.setitem(ck._state, "ready", None)                     # restored for the other tests


def test_rank_below_four_is_refused():
    with pytest.raises(ValueError, match=r"shape \(3, 4, 5\); needs \[..., N, H, W, C\]"):
        ck.nhwc_to_chwn(jnp.zeros((3, 4, 5)))


def _ref_conv_grads(x, w, g, pad):
    """float64 (dL/dx, dL/dw, Σ|terms| of each) for L = Σ conv(x, w)·g, stride 1, `pad` pixels each side."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    kh, kw = w.shape[:2]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = g.shape[1:3]
    dw, dw_abs = np.zeros_like(w), np.zeros_like(w)
    dxp, dxp_abs = np.zeros_like(xp), np.zeros_like(xp)
    for a in range(kh):
        for b in range(kw):
            win = xp[:, a:a + ho, b:b + wo, :]                                   # [N, Ho, Wo, Ci]
            dw[a, b] = np.einsum("nhwi,nhwo->io", win, g)
            dw_abs[a, b] = np.einsum("nhwi,nhwo->io", np.abs(win), np.abs(g))
            dxp[:, a:a + ho, b:b + wo, :] += np.einsum("nhwo,io->nhwi", g, w[a, b])
            dxp_abs[:, a:a + ho, b:b + wo, :] += np.einsum("nhwo,io->nhwi", np.abs(g), np.abs(w[a, b]))
    cut = (slice(None), slice(pad, pad + x.shape[1]), slice(pad, pad + x.shape[2]), slice(None))
    return dxp[cut], dw, dxp_abs[cut], dw_abs


@pytest.mark.parametrize("shape,pad", [((8, 6, 6, 16), 1), ((5, 7, 4, 9), 1), ((3, 6, 6, 8), 0)])
def test_conv_cpu_derivatives_against_float64(shape, pad):
    """conv_cpu's weight and input gradients (the weight one through the kernel's [C,H,W,N] operand) and the
    forward-mode derivative of its weight gradient along x (the kernel's own JVP) against float64 sums."""
    x, w = jnp.asarray(_x(shape)), jnp.asarray(_x((3, 3, shape[-1], 5), 1))
    y = fl._conv(x, w, pad)
    g, v = jnp.asarray(_x(y.shape, 2)), jnp.asarray(_x(shape, 3))
    loss = lambda x, w: jnp.sum(fl.conv_cpu(x, w, pad) * g)
    dx, dw = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    rdx, rdw, adx, adw = _ref_conv_grads(x, w, g, pad)
    n_w, n_x = shape[0] * y.shape[1] * y.shape[2], 9 * 5                # terms per output of each sum
    assert np.all(np.abs(np.asarray(dw, np.float64) - rdw) <= (n_w + 1) * U * adw + 1e-30)
    assert np.all(np.abs(np.asarray(dx, np.float64) - rdx) <= (n_x + 1) * U * adx + 1e-30)
    # d/dε dL/dw (x + εv) = Σ v_window·g: the weight gradient with v in place of x (L is linear in x)
    _, ddw = jax.jvp(lambda x: jax.grad(loss, 1)(x, w), (x,), (v,))
    _, rdv, _, adv = _ref_conv_grads(v, w, g, pad)
    assert np.all(np.abs(np.asarray(ddw, np.float64) - rdv) <= (n_w + 1) * U * adv + 1e-30)
    if fl._chwn_kernel():                                               # the kernel is what was tested
        assert ck.TARGET in _hlo(jax.grad(loss, 1), x, w)


def _transposes_to_chwn(hlo, shape):
    """Fusions in the compiled HLO whose output is x [N,H,W,C] permuted to [C,H,W,N] by XLA itself."""
    n, h, w, c = shape
    pat = rf"= f32\[{c},{h},{w},{n}\]\{{3,2,1,0\}} fusion\("
    return [l for l in hlo.splitlines() if re.search(pat, l) and "transpose" in l]


def test_premise_xla_permutes_the_conv_input_itself_without_the_kernel():
    """Why conv_cpu exists: XLA:CPU's weight gradient of a plain convolution permutes x to [C,H,W,N] in a
    fusion of its own (positive control); through conv_cpu with the kernel that fusion is gone."""
    shape = (16, 8, 8, 24)
    x, w = jnp.asarray(_x(shape)), jnp.asarray(_x((3, 3, 24, 24), 1))
    plain = _hlo(jax.grad(lambda x, w: jnp.sum(jnp.sin(fl._conv(x, w, 1))), 1), x, w)
    assert _transposes_to_chwn(plain, shape)
    if not fl._chwn_kernel():
        assert not ck.available() and ck._state["why"]                 # only where the kernel cannot be built
        return
    ours = _hlo(jax.grad(lambda x, w: jnp.sum(jnp.sin(fl.conv_cpu(x, w, 1))), 1), x, w)
    assert not _transposes_to_chwn(ours, shape) and ck.TARGET in ours


def test_conv_layer_uses_the_kernel_only_on_one_cpu_device(monkeypatch):
    """Conv (3×3) routes through conv_cpu where the kernel runs; with several devices (XLA cannot partition
    the custom call) or without the kernel it is the plain convolution — the same numbers either way."""
    x = jnp.asarray(_x((4, 6, 6, 8)))
    assert float(jnp.max(jnp.abs(x))) < 5
    layer = fl.Conv(8, (3, 3), 1)
    with fl.forms(True):
        params = layer.init(jax.random.PRNGKey(0), x)
        loss = lambda p: jnp.sum(jnp.sin(layer.apply(p, x)))
        g_kernel = jax.grad(loss)(params)
        hlo = _hlo(jax.grad(loss), params)
        assert (ck.TARGET in hlo) == fl._chwn_kernel()
        monkeypatch.setattr(jax, "device_count", lambda *a: 2)
        assert not fl._chwn_kernel()
        g_plain = jax.grad(loss)(params)
        assert ck.TARGET not in _hlo(jax.grad(loss), params)
    n = 4 * 6 * 6                  # products per gradient entry, each |x·cos(·)| < 5: two orders differ ≤ 2γ·5n
    for a, b in zip(jax.tree_util.tree_leaves(g_kernel), jax.tree_util.tree_leaves(g_plain)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2 * (n + 1) * U * 5 * n)
