import numpy as np
import pytest

from jaxrepro import metrics
from jaxrepro.descriptors import get_descriptor


def np_cosine_centred(a, b):
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def np_dist(a, b):
    return np.linalg.norm(a.reshape(len(a), 1, -1).astype(np.float64) - b.reshape(1, len(b), -1), axis=2)


U32 = float(np.finfo(np.float32).eps) / 2    # float32 unit roundoff
# Cosine of centred unit features of F pixels in float32: each norm ≤ (F/2 + 2)·u relative, the F-term dot of two
# unit vectors ≤ F·u; centring errors add a constant vector, which moves a cosine only to second order.
COS_ERR = lambda f: (2 * (f / 2 + 2) + f) * U32        # noqa: E731   (F = 48: 5.9e-6)


def test_top_k_matches_brute_force_including_near_ties(rng):
    train = rng.uniform(-1, 1, (301, 4, 4, 3)).astype(np.float32)
    train[7] = train[3] + 1e-4                                           # a near duplicate
    q = np.concatenate([train[:5] + 0.01 * rng.standard_normal((5, 4, 4, 3)), train[3:4] + 4e-5]).astype(np.float32)
    dist, idx = metrics.top_k_similar(q, train, 2, chunk=64)
    ref = np_dist(q, train)
    np.testing.assert_array_equal(idx, np.argsort(ref, 1)[:, :2])     # nearest two differ by ≥ 1e-3 relative
    # exact ‖q − r‖ from float32 differences (each rounded once) and a 48-term sum of squares:
    # ≤ (48/2 + 2)·u ≈ 1.6e-6 relative; rtol 1e-5
    np.testing.assert_allclose(dist, np.sort(ref, 1)[:, :2], rtol=1e-5)
    desc = get_descriptor("pixel_cosine")
    s, i = metrics.max_similarity(desc.embed(q), desc.embed(train), desc, chunk=50)
    full = np_cosine_centred(q.astype(np.float64), train.astype(np.float64))     # float64 reference
    # Centring removes the constant 1e-4 offset of train[7] from train[3]: for queries 3 and 5 the two are tied
    # to ~1e-9 in cosine, far below float32 rounding, so the argmax may be either; require a maximiser up to the bound.
    tol = 1.7 * COS_ERR(48)                                              # 1e-5
    assert np.all(full[np.arange(len(q)), np.asarray(i)] >= full.max(1) - tol), (np.asarray(i), full.argmax(1))
    np.testing.assert_allclose(s, full.max(1), atol=tol)


def test_rp_and_gl_against_direct_counts(rng):
    train = rng.uniform(-1, 1, (40, 8, 8, 3)).astype(np.float32)
    x1 = np.concatenate([train[:10], rng.uniform(-1, 1, (10, 8, 8, 3))]).astype(np.float32)
    x2 = (x1 + np.r_[np.full(12, 0.01), np.full(8, 2.0)][:, None, None, None]
          * rng.standard_normal(x1.shape)).astype(np.float32)
    for name, thr in [("pixel_cosine", 0.6), ("pixel_l2", -0.3)]:
        desc = get_descriptor(name)
        f1, f2, ft = desc.embed(x1), desc.embed(x2), desc.embed(train)
        seeds = np.arange(20)
        pair = np.diag(np_cosine_centred(x1, x2)) if name == "pixel_cosine" else -np.linalg.norm(
            (x1 - x2).reshape(20, -1), axis=1) / np.sqrt(192)
        # exact fractions need every score farther from thr than float32 error (≤ COS_ERR(192) ≈ 2e-5; L2 likewise)
        assert np.abs(pair - thr).min() > 1e-3
        assert metrics.rp_score(f1, f2, seeds, seeds, desc, thr) == pytest.approx(np.mean(pair > thr))
        best = np_cosine_centred(x1, train).max(1) if name == "pixel_cosine" else -np_dist(x1, train).min(1) / np.sqrt(192)
        assert np.abs(best - thr).min() > 1e-3                          # as above
        assert metrics.gl_score(f1, ft, desc, thr, chunk=16) == pytest.approx(1 - np.mean(best > thr))
        assert metrics.gl_score(f1, ft, desc, thr) == pytest.approx(0.5)   # 10 copies of 20


def test_rp_refuses_mismatched_seeds(rng):
    desc = get_descriptor("pixel_cosine")
    f = desc.embed(rng.standard_normal((4, 3, 3, 3)))
    with pytest.raises(ValueError, match="seeds differ"):
        metrics.rp_score(f, f, [0, 1, 2, 3], [0, 1, 3, 2], desc, 0.6)
    with pytest.raises(ValueError, match="labels differ"):
        metrics.rp_cond_score(f, f, np.arange(4), np.arange(4), [0, 0, 1, 1], [0, 1, 1, 1], desc, 0.6)


def test_rp_between_takes_the_best_class(rng):
    desc = get_descriptor("pixel_cosine")
    x1 = rng.standard_normal((6, 4, 4, 3)).astype(np.float32)
    cond = rng.standard_normal((6, 3, 4, 4, 3)).astype(np.float32)
    cond[:3, 1] = x1[:3] + 0.01 * rng.standard_normal((3, 4, 4, 3))
    f_cond = np.stack([np.asarray(desc.embed(cond[:, c])) for c in range(3)], 1)
    # best-class cosines are ≈ 0.9999 (3 copies) or ≤ 0.2 (3 unrelated): ≥ 0.4 from 0.6, ≫ float32 error
    assert metrics.rp_between_score(desc.embed(x1), f_cond, np.arange(6), np.arange(6), desc, 0.6) == 0.5


def test_gu_ratio_and_same_nearest(rng):
    train = rng.uniform(-1, 1, (30, 4, 4, 3)).astype(np.float32)
    x = np.concatenate([train[:6] + 0.02 * rng.standard_normal((6, 4, 4, 3)),
                        0.5 * (train[6:10] + train[10:14])]).astype(np.float32)
    ratio, nn = metrics.gu_ratio(x, train)
    d = np.sort(np_dist(x, train), 1)
    # ratio of two exact float32 distances, each ≤ (48/2 + 2)·u relative: ≤ 53·u ≈ 3.2e-6; rtol 1e-5
    np.testing.assert_allclose(ratio, d[:, 0] / d[:, 1], rtol=1e-5)
    # ratios ≈ 0.03 (noisy copies) and 1 (midpoints): ≥ 0.29 from 1/3, ≫ the 3.2e-6 error above
    assert metrics.gl_gu(x, train) == pytest.approx(0.4)                # the 4 midpoints are new
    y = x.copy()
    y[:3] = train[10:13]
    assert metrics.same_nearest_rate(x[:6], y[:6], train) == pytest.approx(0.5)


def test_threshold_calibration(rng):
    scores = rng.standard_normal(10_000)
    cal = metrics.calibrate_threshold(scores, fpr=0.01)
    # N(0,1) 99th percentile from n = 1e4 draws (fixed seed): SE = √(p(1 − p)/n)/φ(2.326) = 0.037; 4 SE
    # (was 0.08 = 2.1 SE). Still rejects the 98th (2.054) and 99.5th (2.576) percentiles.
    assert cal["threshold"] == pytest.approx(2.326, abs=4 * np.sqrt(0.99 * 0.01 / 10_000) / 0.02665)
    assert cal["fpr"] <= 0.01 and sum(cal["hist_counts"]) == 10_000
    with pytest.raises(ValueError, match="cannot resolve"):
        metrics.calibrate_threshold(scores[:50], fpr=0.01)
    desc = get_descriptor("pixel_cosine")
    f = desc.embed(rng.standard_normal((5, 8)))
    # float32 on both sides, F = 8: the package's 8-term dot ≤ 8u, the reference's re-normalisation ≤ 2·(8/2 + 2)·u
    # and its dot ≤ 8u → ≤ 28u = 1.7e-6 (the old 1e-6 was below it); atol 3e-6
    np.testing.assert_allclose(metrics.unrelated_pairs(f, desc), np.diag(np_cosine_centred(
        np.asarray(f), np.roll(np.asarray(f), -1, 0))), atol=3e-6)


def test_unknown_descriptor():
    with pytest.raises(ValueError, match="allowed: pixel_cosine, pixel_l2, sscd"):
        get_descriptor("dino")
    with pytest.raises(ValueError, match="needs checkpoint"):
        get_descriptor("sscd")
