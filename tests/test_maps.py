"""The analytic maps (jaxrepro.maps) against float64 brute-force references written from the papers' formulas.

Tolerances. Outputs are convex combinations of training values in [−1, 1]. The maps reuse the oracle's
float32 path (matmul distances, exact re-evaluation of the nearest candidates), so they are held to the
oracle's own bound (tests/test_oracle.py): 1e-4 absolute over σ ∈ [0.002, 80]. At the queries used here
(noisy training images, random points) the logit gaps between competing candidates are many times the
float32 error of the exactly re-evaluated distances (≤ F·eps·d²/2σ² with F ≤ 50 patch entries), so a
weight can move by ≲ 1e-5 and an output by ≲ 2·1e-5 + N·eps; 1e-4 leaves a margin for the accumulation
order. Identities that run the same float32 operations on permuted inputs (equivariance) are held to 1e-6.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import brute_force_denoiser
from jaxrepro import maps, oracle
from jaxrepro.maps import local

SIGMAS = [0.002, 0.02, 0.2, 1.0, 5.0, 80.0]
TOL = 1e-4


def brute_local(x, sigma, data, size, equivariant, padding="zeros"):
    """float64 LS / ELS by explicit patch loops: x [B, H, W, C], data [N, H, W, C], sigma [B]."""
    x, y = np.asarray(x, np.float64), np.asarray(data, np.float64)
    r, (_, h, w, _) = size // 2, x.shape
    mode = "constant" if padding == "zeros" else "wrap"
    xp, yp = (np.pad(a, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode) for a in (x, y))
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (len(x),))
    out = np.empty_like(x)
    for b in range(len(x)):
        for i in range(h):
            for j in range(w):
                q = xp[b, i:i + size, j:j + size]
                if equivariant:
                    cands = [(yp[n, k:k + size, l:l + size], y[n, k, l])
                             for n in range(len(y)) for k in range(h) for l in range(w)]
                else:
                    cands = [(yp[n, i:i + size, j:j + size], y[n, i, j]) for n in range(len(y))]
                logits = np.array([-((q - p) ** 2).sum() / (2 * sigma[b] ** 2) for p, _ in cands])
                wts = np.exp(logits - logits.max())
                out[b, i, j] = (wts / wts.sum()) @ np.array([c for _, c in cands])
    return out


def data_and_queries(rng, sigma, n=6, shape=(5, 5, 2)):
    data = rng.uniform(-1, 1, (n, *shape)).astype(np.float32)
    x = np.concatenate([data[:3] + sigma * rng.standard_normal((3, *shape)), rng.uniform(-1, 1, (2, *shape))])
    return data, x.astype(np.float32)


@pytest.mark.parametrize("equivariant", [False, True])
def test_local_machines_match_brute_force(rng, equivariant):
    for size in (1, 3):
        for sigma in SIGMAS:
            data, x = data_and_queries(rng, sigma)
            got = maps.make_local(data, (size,), equivariant=equivariant, chunk=32)(x, sigma)
            err = np.abs(np.asarray(got) - brute_local(x, sigma, data, size, equivariant)).max()
            assert err <= TOL, (size, sigma, err)


def test_schedule_picks_each_rows_patch_size(rng):
    """Per-row σ across three schedule bins (sizes 1, 3, 5; edges 0.1, 1), ELS with wrap padding."""
    data, x = data_and_queries(rng, 0.3, n=4)
    sig = np.array([0.05, 0.5, 3.0, 0.1, 1.0], np.float32)           # edges belong to the bin above
    den = maps.make_local(data, (1, 3, 5), (0.1, 1.0), equivariant=True, padding="wrap")
    got = np.asarray(den(x, sig))
    for b, size in enumerate([1, 3, 5, 3, 5]):
        ref = brute_local(x[b:b + 1], sig[b], data, size, True, "wrap")
        assert np.abs(got[b:b + 1] - ref).max() <= TOL, (b, size)


def test_ls_with_whole_image_patches_is_theorem_1(rng):
    """P = 2·max(H, W) − 1 with zero padding: every patch holds the whole image, so the weights are Theorem 1's."""
    data, _ = data_and_queries(rng, 0.0, n=12)
    x = rng.uniform(-1, 1, (4, 5, 5, 2)).astype(np.float32)
    for sigma in (0.05, 0.5, 5.0):
        ls = np.asarray(maps.make_local(data, (9,))(x, sigma))
        np.testing.assert_allclose(ls, np.asarray(oracle.optimal_denoiser(x, sigma, data)), atol=TOL)


def test_els_is_translation_equivariant(rng):
    """With wrap padding the ELS patch set is shift-invariant: ELS(shift x) = shift ELS(x)."""
    data, x = data_and_queries(rng, 0.5)
    den = maps.make_local(data, (3,), equivariant=True, padding="wrap")
    shift = lambda a: np.roll(a, (1, 2), axis=(1, 2))  # noqa: E731
    for sigma in (0.1, 1.0):
        np.testing.assert_allclose(np.asarray(den(shift(x), sigma)), shift(np.asarray(den(x, sigma))), atol=1e-6)


def test_smoothed_matches_brute_force_and_lam_zero_is_theorem_1(rng):
    data = rng.uniform(-1, 1, (20, 3, 3, 2)).astype(np.float32)
    for lam in (0.0, 0.05, 0.3):
        sm = maps.make_smoothed(data, lam, num_noise=5, seed=1)
        e = np.asarray(sm.noise, np.float64)
        for sigma in (0.002, 0.1, 1.0, 20.0):
            x = (data[:4] + sigma * rng.standard_normal(data[:4].shape)).astype(np.float32)
            ref = np.mean([brute_force_denoiser(x + lam * (1 + sigma) * e[m], sigma, data) for m in range(5)], 0)
            err = np.abs(np.asarray(sm(x, sigma)).reshape(4, -1) - ref).max()
            assert err <= TOL, (lam, sigma, err)


def test_calibration_recovers_a_known_schedule(rng):
    """A 'network' that is an ELS machine with P = 1 below σ = 0.3 and P = 5 above is explained best by that schedule."""
    data = rng.uniform(-1, 1, (6, 5, 5, 1)).astype(np.float32)
    net = maps.make_local(data, (1, 5), (0.3,), equivariant=True)
    states = {s: (data[:4] + s * rng.standard_normal((4, 5, 5, 1))).astype(np.float32) for s in (0.1, 1.0)}
    sizes, edges, table = maps.calibrate(net, data, states, (1, 3, 5), equivariant=True)
    assert sizes == (1, 5) and np.isclose(edges[0], np.sqrt(0.1)), (sizes, edges, table)
    assert table[0.1][1] > 1 - 1e-6 and table[1.0][5] > 1 - 1e-6


def test_registry_and_bad_input(rng):
    data = rng.uniform(-1, 1, (5, 4, 4, 1)).astype(np.float32)
    assert set(maps.MAPS) == {"theorem1", "ls", "els", "smoothed", "population"}
    bases = np.linalg.qr(rng.standard_normal((16, 16)))[0][:, :4].reshape(16, 2, 2).transpose(1, 0, 2)
    pop = maps.make_map("population", data, bases=bases)
    x = rng.standard_normal((3, 4, 4, 1)).astype(np.float32)
    np.testing.assert_allclose(pop(x, 0.5), oracle.molrg_denoiser(x, 0.5, bases), atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        maps.make_map("ls", data, sizes=(2,))
    with pytest.raises(ValueError, match="ascending"):
        maps.make_map("els", data, sizes=(1, 3), edges=())
    with pytest.raises(ValueError, match="lam"):
        maps.make_map("smoothed", data, lam=-1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        maps.make_map("ls", data)(x, 0.0)
    with pytest.raises(ValueError, match="unknown map"):
        maps.make_map("nope", data)
    with pytest.raises(ValueError, match="bases"):
        maps.make_map("population", data)
    assert local.unfold(x, 3).shape == (3, 16, 9)


def test_sharded_maps_match_single_device():
    """8 forced CPU devices (own process, so XLA_FLAGS applies before jax starts); 13 images: not a multiple of 8."""
    script = textwrap.dedent("""
        import numpy as np, jax
        from jax.sharding import Mesh
        from jaxrepro import maps
        assert jax.device_count() == 8, jax.devices()
        rng = np.random.default_rng(0)
        data = rng.uniform(-1, 1, (13, 5, 5, 2)).astype(np.float32)
        x = np.concatenate([data[:3] + 0.05 * rng.standard_normal((3, 5, 5, 2)),
                            rng.uniform(-1, 1, (2, 5, 5, 2))]).astype(np.float32)
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sig = np.array([0.002, 0.05, 0.5, 2.0, 80.0], np.float32)
        for eq in (False, True):
            a = np.asarray(maps.sharded_local(data, mesh, (1, 3), (0.3,), equivariant=eq, chunk=4)(x, sig))
            b = np.asarray(maps.make_local(data, (1, 3), (0.3,), equivariant=eq)(x, sig))
            assert np.abs(a - b).max() < 1e-5, (eq, np.abs(a - b).max())
        for sigma in (0.01, 1.0):
            a = np.asarray(maps.sharded_smoothed(data, mesh, 0.2, num_noise=3, chunk=4)(x, sigma))
            b = np.asarray(maps.make_smoothed(data, 0.2, num_noise=3)(x, sigma))
            assert np.abs(a - b).max() < 1e-5, (sigma, np.abs(a - b).max())
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
