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


def _kernel_runs():
    """Whether nhwc_to_chwn uses the kernel here (built, and the default backend is the CPU)."""
    return ck.available() and jax.default_backend() == "cpu"


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The kernel state as in a new process, building into an empty cache, whatever the user's environment."""
    monkeypatch.delenv("JAXREPRO_CPU_KERNELS", raising=False)
    monkeypatch.setenv("JAXREPRO_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ck._state, "ready", None)
    monkeypatch.setitem(ck._state, "why", "")
    return tmp_path / "cache"


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _hlo(f, *args):
    return jax.jit(f).lower(*args).compile().as_text()


def test_the_kernel_is_built_where_a_compiler_exists(fresh, caplog):
    """A fresh build in an empty directory, loadable by others; a second call finds it instead of rebuilding."""
    if not HAVE_COMPILER:                      # no compiler here: the error names the missing compiler
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            ck.build(fresh)
        with caplog.at_level(logging.WARNING):
            assert not ck.available()
        assert "XLA's (slower) transpose is used instead" in caplog.text
        return
    assert ck.available()                                              # built into the empty cache
    lib, = fresh.iterdir()                                             # no temporary file left behind
    assert lib.suffix == ".so" and lib.stat().st_size > 0 and lib.stat().st_mode & 0o005 == 0o005 & ~_umask()
    mtime = lib.stat().st_mtime_ns
    assert ck.build() == lib and lib.stat().st_mtime_ns == mtime


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_an_unusable_cxx_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++ -O2")
    with pytest.raises(RuntimeError, match=r"\$CXX='/nonexistent/g\+\+ -O2' is not a usable compiler"):
        ck._compiler()


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
    assert (ck.TARGET in hlo) == _kernel_runs()                        # the kernel ran wherever it is built
    xb = jnp.stack([x, -x, 2 * x])                                      # vmap: one more leading dimension
    got = jax.jit(jax.vmap(ck.nhwc_to_chwn))(xb)
    assert np.array_equal(np.asarray(got), np.stack([want, -want, 2 * want]))


def test_fallback_is_xla_transpose(monkeypatch):
    """With the kernel unavailable (or off), the same values come from XLA's transpose, no custom call."""
    monkeypatch.setitem(ck._state, "ready", False)
    x = jnp.asarray(_x((6, 4, 5, 10)))
    assert ck.TARGET not in _hlo(ck.nhwc_to_chwn, x)
    assert np.array_equal(np.asarray(ck.nhwc_to_chwn(x)), np.transpose(np.asarray(x), (3, 1, 2, 0)))


def test_off_switch(fresh, monkeypatch):
    monkeypatch.setenv("JAXREPRO_CPU_KERNELS", "0")
    assert not ck.available() and ck._state["why"] == "JAXREPRO_CPU_KERNELS=0"
    assert not fresh.exists()                                          # nothing was built


def test_portable_path_is_exact(tmp_path):
    """The scalar 8×8 path (the only one on non-x86 CPUs or without AVX2), built with JAXREPRO_NO_AVX2."""
    import ctypes
    if not HAVE_COMPILER:                      # without a compiler the fallback runs instead (tested above)
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            ck.build(tmp_path, defines=("JAXREPRO_NO_AVX2",))
        return
    lib = ctypes.cdll.LoadLibrary(str(ck.build(tmp_path, defines=("JAXREPRO_NO_AVX2",))))
    name = ck.TARGET + "_portable_test"
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(lib.JaxreproNhwcToChwn), platform="cpu")
    for shape in [(64, 8, 8, 32), (9, 3, 5, 13), (2, 3, 5, 7, 11)]:
        x = jnp.asarray(_x(shape))
        r = len(shape)
        perm = (*range(r - 4), r - 1, r - 3, r - 2, r - 4)
        out = jax.ShapeDtypeStruct(tuple(shape[p] for p in perm), jnp.float32)
        got = jax.jit(jax.ffi.ffi_call(name, out))(x)
        assert np.array_equal(np.asarray(got), np.transpose(np.asarray(x), perm))


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
    if _kernel_runs():                                                  # the kernel is what was tested
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
    if not _kernel_runs():
        assert not ck.available() and ck._state["why"] or jax.default_backend() != "cpu"
        return
    ours = _hlo(jax.grad(lambda x, w: jnp.sum(jnp.sin(fl.conv_cpu(x, w, 1))), 1), x, w)
    assert not _transposes_to_chwn(ours, shape) and ck.TARGET in ours
    ffi = re.search(r"%(ffi_call[\w.]*) = f32\[24,8,8,16\]", ours).group(1)
    assert re.search(rf"convolution\(%{ffi}, ", ours)                  # the weight gradient reads it directly


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
