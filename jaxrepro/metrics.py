"""The paper's scores (PAPER.md §3): RP, GL, RP_cond, RP_between, nearest neighbours, thresholds.

Scores take descriptor features (`descriptor.embed(images)`) and a threshold; the paper uses
SSCD with 0.6. Maxima over a training set are chunked matmuls, never a [chunk, N, dim] tensor.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

GU_RATIO = 1.0 / 3.0   # Gu et al. 2023: memorized if ‖x − NN1‖ / ‖x − NN2‖ < 1/3


def quantize(images):
    """Images as the authors save them: uint8 = clip(⌊x·127.5 + 128⌋, 0, 255), mapped back to [−1, 1]."""
    q = np.clip(np.floor(np.asarray(images, np.float32) * 127.5 + 128), 0, 255)
    return (q / 127.5 - 1).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("k", "chunk", "l2"))
def _top_k_chunked(query, ref, k, chunk, l2):
    """Top-k scores and indices of query [A, F] against ref [N, F] in chunks of ref rows."""
    n = ref.shape[0]
    pad = (-n) % chunk
    refs = jnp.pad(ref, ((0, pad), (0, 0))).reshape(-1, chunk, ref.shape[1])
    ids = jnp.arange(n + pad).reshape(-1, chunk)
    q_sq = jnp.sum(query * query, 1)

    def body(carry, inp):
        best, best_idx = carry
        r, i = inp
        score = jnp.dot(query, r.T, precision=lax.Precision.HIGHEST)           # [A, C]
        if l2:
            score = -(q_sq[:, None] - 2 * score + jnp.sum(r * r, 1)[None])    # −‖q − r‖²
        score = jnp.where(i[None] < n, score, -jnp.inf)
        cat_s = jnp.concatenate([best, score], 1)
        cat_i = jnp.concatenate([best_idx, jnp.broadcast_to(i, score.shape)], 1)
        best, pos = lax.top_k(cat_s, k)
        return (best, jnp.take_along_axis(cat_i, pos, 1)), None

    init = (jnp.full((query.shape[0], k), -jnp.inf, query.dtype), jnp.zeros((query.shape[0], k), jnp.int32))
    (best, idx), _ = lax.scan(body, init, (refs, ids))
    return best, idx


def top_k_similar(query, ref, k=1, descriptor=None, chunk=4096):
    """(scores [A, k], indices [A, k]) of the k most similar rows of ref, best first.

    descriptor=None means raw pixels and L2 distance (scores = distances, ascending); for a
    descriptor the scores are its similarities (descending). L2 candidates are re-evaluated
    exactly as ‖q − r‖ so near ties are ordered correctly.
    """
    query = jnp.asarray(query, jnp.float32).reshape(len(query), -1)
    ref = jnp.asarray(ref, jnp.float32).reshape(len(ref), -1)
    if query.shape[1] != ref.shape[1]:
        raise ValueError(f"query features {query.shape} and reference {ref.shape} differ in size")
    if not 1 <= k <= ref.shape[0]:
        raise ValueError(f"k must be in [1, {ref.shape[0]}] (the reference size), got {k}")
    l2 = descriptor is None or descriptor.kind == "l2"
    extra = min(k + 4, ref.shape[0]) if l2 else k
    best, idx = _top_k_chunked(query, ref, extra, min(chunk, ref.shape[0]), l2)
    if not l2:                                                              # dot of features
        return best, idx
    dist = jnp.linalg.norm(query[:, None, :] - ref[idx], axis=-1)            # [A, extra] exact
    order = jnp.argsort(dist, axis=1)[:, :k]
    dist, idx = jnp.take_along_axis(dist, order, 1), jnp.take_along_axis(idx, order, 1)
    return (dist, idx) if descriptor is None else (-dist, idx)


def max_similarity(feats, ref_feats, descriptor, chunk=4096):
    """(max_i M(x, y_i) [A], argmax [A]) over the reference features, chunked."""
    s, i = top_k_similar(feats, ref_feats, 1, descriptor, chunk)
    return s[:, 0], i[:, 0]


def _check_pairs(seeds1, seeds2, n1, n2):
    s1, s2 = np.asarray(seeds1), np.asarray(seeds2)
    if s1.shape != (n1,) or s2.shape != (n2,):
        raise ValueError(f"seeds {s1.shape}, {s2.shape} must match the feature counts {n1}, {n2}")
    bad = np.flatnonzero(s1 != s2)
    if bad.size:
        raise ValueError(f"RP pairs samples by seed, but {bad.size} seeds differ "
                         f"(first at row {bad[0]}: {s1[bad[0]]} vs {s2[bad[0]]})")


def pair_scores(feats1, feats2, seeds1, seeds2, descriptor):
    """M(x1_i, x2_i) [B] for samples of two models from the same seeds (refuses mismatched seeds)."""
    _check_pairs(seeds1, seeds2, len(feats1), len(feats2))
    return descriptor.pair_similarity(jnp.asarray(feats1), jnp.asarray(feats2))


def rp_score(feats1, feats2, seeds1, seeds2, descriptor, threshold):
    """RP = P(M(x1, x2) > threshold) over seed-matched pairs."""
    return float(jnp.mean(pair_scores(feats1, feats2, seeds1, seeds2, descriptor) > threshold))


def rp_cond_score(feats1, feats2, seeds1, seeds2, labels1, labels2, descriptor, threshold):
    """RP_cond: RP of two conditional models, pairs matched by seed and class."""
    if np.any(np.asarray(labels1) != np.asarray(labels2)):
        raise ValueError("RP_cond pairs samples of the same class: labels differ")
    return rp_score(feats1, feats2, seeds1, seeds2, descriptor, threshold)


def rp_between_score(feats_uncond, feats_cond, seeds1, seeds2, descriptor, threshold):
    """RP_between = P(max_c M(x1, x2^c) > threshold); feats_cond [B, K, F] holds one sample per class."""
    feats_cond = jnp.asarray(feats_cond)
    _check_pairs(seeds1, seeds2, len(feats_uncond), len(feats_cond))
    per_class = jax.vmap(lambda f: descriptor.pair_similarity(jnp.asarray(feats_uncond), f),
                         in_axes=1, out_axes=1)(feats_cond)                # [B, K]
    return float(jnp.mean(jnp.max(per_class, axis=1) > threshold))


def gl_score(feats, train_feats, descriptor, threshold, chunk=4096):
    """GL = 1 − P(max_i M(x, y_i) > threshold) over the training set."""
    best, _ = max_similarity(feats, train_feats, descriptor, chunk)
    return float(1.0 - jnp.mean(best > threshold))


def gu_ratio(images, train_images, chunk=4096):
    """Gu et al.'s ‖x − NN1‖ / ‖x − NN2‖ in pixel L2 [B], and the NN1 index [B]."""
    if len(train_images) < 2:
        raise ValueError(f"the ratio test needs >= 2 training images, got {len(train_images)}")
    dist, idx = top_k_similar(images, train_images, 2, None, chunk)
    return dist[:, 0] / jnp.maximum(dist[:, 1], 1e-12), idx[:, 0]


def gl_gu(images, train_images, chunk=4096):
    """GL by the ratio test: 1 − fraction of samples with ratio < 1/3."""
    ratio, _ = gu_ratio(images, train_images, chunk)
    return float(1.0 - jnp.mean(ratio < GU_RATIO))


def same_nearest_rate(images1, images2, train_images, chunk=4096):
    """Fraction of pairs whose two images have the same L2-nearest training image."""
    _, i1 = top_k_similar(images1, train_images, 1, None, chunk)
    _, i2 = top_k_similar(images2, train_images, 1, None, chunk)
    return float(jnp.mean(i1[:, 0] == i2[:, 0]))


def calibrate_threshold(unrelated_scores, fpr=0.01, bins=50):
    """Threshold whose false-positive rate on unrelated pairs (different seeds) is `fpr`, with the histogram."""
    scores = np.asarray(unrelated_scores, np.float64).reshape(-1)
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    if scores.size < 1 / fpr:
        raise ValueError(f"{scores.size} unrelated pairs cannot resolve fpr={fpr}; need >= {int(np.ceil(1 / fpr))}")
    threshold = float(np.quantile(scores, 1 - fpr, method="higher"))
    counts, edges = np.histogram(scores, bins=bins)
    return {"threshold": threshold, "fpr": float(np.mean(scores > threshold)), "target_fpr": fpr,
            "n_pairs": int(scores.size), "hist_counts": counts.tolist(), "hist_edges": edges.tolist()}


def unrelated_pairs(feats, descriptor, shift=1, other=None):
    """Scores of pairs with different seeds: sample i against sample i + shift (cyclic) of `other` (default feats)."""
    feats = jnp.asarray(feats)
    other = feats if other is None else jnp.asarray(other)
    return descriptor.pair_similarity(feats, jnp.roll(other, -shift, axis=0))
