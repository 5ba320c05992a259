"""Closed-form optimal denoisers: Theorem 1 over a training set, and population oracles.

Empirical oracle (PAPER.md §2, EDM space s = 1):
    D*(x; σ) = Σ_i w_i y_i,   w = softmax_i(−‖x − y_i‖² / (2σ²)).
One pass over the data in chunks of C points with a running log-sum-exp; per chunk the
squared distances come from one matmul (‖x‖² − 2x·y + ‖y‖²), and the `num_exact` nearest
points of the chunk are re-evaluated exactly as ‖x − y‖² so that float32 cancellation
(≈1e-4 absolute in d², i.e. ≈12 logit units at σ = 0.002) cannot move the weights that matter.
Memory: O(B·C + B·k·D + N·D).
"""
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HIGHEST = lax.Precision.HIGHEST
DEFAULT_CHUNK = 2048
DEFAULT_NUM_EXACT = 8
REFINE_TOL = 1e-2  # logit units of float32 cancellation tolerated without exact re-evaluation


def prepare(data, labels=None, valid=None, chunk=DEFAULT_CHUNK):
    """Training set in chunks: {y [n, C, D], y_sq [n, C], valid [n, C], labels [n, C]}."""
    data = jnp.asarray(data)
    data = data.reshape(data.shape[0], -1)
    n = data.shape[0]
    chunk = min(chunk, n)
    pad = (-n) % chunk
    valid = jnp.ones(n, bool) if valid is None else jnp.asarray(valid, bool)
    labels = jnp.zeros(n, jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
    y = jnp.pad(data, ((0, pad), (0, 0)))
    return {"y": y.reshape(-1, chunk, data.shape[1]),
            "y_sq": jnp.sum(y * y, axis=1).reshape(-1, chunk),
            "valid": jnp.pad(valid, (0, pad)).reshape(-1, chunk),
            "labels": jnp.pad(labels, (0, pad)).reshape(-1, chunk)}


def _needs_refit(x_sq, sigma, prep):
    """True when float32 cancellation in ‖x‖² − 2x·y + ‖y‖² can exceed REFINE_TOL logit units."""
    eps = jnp.finfo(x_sq.dtype).eps
    y_sq_max = jnp.max(jnp.where(prep["valid"], prep["y_sq"], 0.0))
    bound = 4 * eps * (jnp.max(x_sq) + y_sq_max) * jnp.max(0.5 / sigma ** 2)
    return bound > REFINE_TOL


def partial_stats(x, sigma, prep, x_labels=None, num_exact=DEFAULT_NUM_EXACT):
    """Log-sum-exp statistics of the softmax over a prepared set: (m [B], s [B], num [B, D]).

    D* = num / s with s = Σ_i exp(l_i − m), num = Σ_i exp(l_i − m) y_i, l_i = −‖x − y_i‖²/(2σ²);
    rows with no admissible point get m = −inf, s = 0. x [B, D], sigma [B], x_labels [B]
    restricts each query to the points of its class.
    """
    b, d = x.shape
    x_labels = jnp.zeros(b, jnp.int32) if x_labels is None else x_labels
    k = min(num_exact, prep["y"].shape[1])
    x_sq = jnp.sum(x * x, axis=1)                                    # [B]
    inv_two_var = 0.5 / sigma ** 2                                    # [B]

    def scan(refine):
        def body(carry, inp):
            m, s, num = carry
            y, y_sq, ok, lab = inp                                    # [C, D], [C], [C], [C]
            mask = ok[None, :] & (lab[None, :] == x_labels[:, None])  # [B, C]
            d2 = x_sq[:, None] - 2.0 * jnp.dot(x, y.T, precision=HIGHEST) + y_sq[None, :]
            if refine:   # exact ‖x − y‖² for the k nearest points of this chunk
                _, idx = lax.top_k(jnp.where(mask, -d2, -jnp.inf), k)  # [B, k]
                diff = x[:, None, :] - y[idx]                          # [B, k, D]
                d2 = jnp.put_along_axis(d2, idx, jnp.sum(diff * diff, -1), axis=1, inplace=False)
            logits = jnp.where(mask, -d2 * inv_two_var[:, None], -jnp.inf)   # [B, C]
            m_new = jnp.maximum(m, jnp.max(logits, axis=1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            scale = jnp.exp(m - m_safe)                               # 0 where m = −inf
            p = jnp.exp(logits - m_safe[:, None])                     # [B, C]
            s = s * scale + jnp.sum(p, axis=1)
            num = num * scale[:, None] + jnp.dot(p, y, precision=HIGHEST)
            return (m_new, s, num), None

        def run(_):
            init = (jnp.full((b,), -jnp.inf, x.dtype), jnp.zeros((b,), x.dtype),
                    jnp.zeros((b, d), x.dtype))
            out, _ = lax.scan(body, init, (prep["y"], prep["y_sq"], prep["valid"], prep["labels"]))
            return out
        return run

    if k == 0:
        return scan(False)(None)
    return lax.cond(_needs_refit(x_sq, sigma, prep), scan(True), scan(False), None)


@flax.struct.dataclass
class Oracle:
    """Theorem 1's D*(x, σ[, labels]) for a fixed training set; a pytree, so it can be passed to jit."""
    prep: dict
    image_shape: tuple = flax.struct.field(pytree_node=False)
    num_exact: int = flax.struct.field(pytree_node=False)
    conditional: bool = flax.struct.field(pytree_node=False)

    def __call__(self, x, sigma, labels=None):
        """D*(x; σ): x [B, *image], sigma scalar or [B], labels [B] for a conditional oracle."""
        _check_query(x, sigma, self.image_shape)
        if (labels is None) == self.conditional:
            raise ValueError("pass query labels exactly when the oracle was built with data labels")
        if labels is not None and not isinstance(labels, jax.core.Tracer):
            known = self.prep["labels"][self.prep["valid"]]
            missing = set(np.asarray(labels).reshape(-1).tolist()) - set(np.asarray(known).tolist())
            if missing:
                raise ValueError(f"query labels {sorted(missing)} have no training points")
            labels = jnp.asarray(labels, jnp.int32)
        return _apply(self, x, sigma, labels)


@jax.jit
def _apply(oracle, x, sigma, labels):
    sig = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
    _, s, num = partial_stats(x.reshape(x.shape[0], -1), sig, oracle.prep, labels, oracle.num_exact)
    return (num / s[:, None]).reshape(x.shape)


def make_optimal_denoiser(data, labels=None, *, chunk=DEFAULT_CHUNK, num_exact=DEFAULT_NUM_EXACT):
    """Oracle D(x, σ) (or D(x, σ, labels) when `labels` is given) for a fixed training set."""
    shape = np.shape(data)
    if len(shape) < 2 or shape[0] == 0:
        raise ValueError(f"data must be [N >= 1, *image], got shape {shape}")
    if labels is not None and np.shape(labels) != (shape[0],):
        raise ValueError(f"labels must be [N] = [{shape[0]}], got shape {np.shape(labels)}")
    if int(chunk) < 1 or int(num_exact) < 0:
        raise ValueError(f"need chunk >= 1 and num_exact >= 0, got chunk={chunk}, num_exact={num_exact}")
    return Oracle(prepare(data, labels, chunk=chunk), tuple(shape[1:]), int(num_exact), labels is not None)


def _check_query(x, sigma, image_shape):
    """Shape and σ > 0 checks; values that are traced skip the σ check."""
    if tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"x has image shape {tuple(x.shape[1:])}, the training set {tuple(image_shape)}")
    if jnp.ndim(sigma) not in (0, 1) or (jnp.ndim(sigma) == 1 and jnp.shape(sigma)[0] != x.shape[0]):
        raise ValueError(f"sigma must be a scalar or [B] = [{x.shape[0]}], got shape {jnp.shape(sigma)}")
    if not isinstance(sigma, jax.core.Tracer) and bool(np.any(np.asarray(sigma) <= 0)):
        raise ValueError(f"sigma must be > 0, got min {float(np.min(np.asarray(sigma)))}")


def optimal_denoiser(x, sigma, data, *, chunk=DEFAULT_CHUNK, num_exact=DEFAULT_NUM_EXACT):
    """D*(x; σ) of Theorem 1 in EDM space: x [B, *image], sigma scalar or [B], data [N, *image]."""
    return make_optimal_denoiser(data, chunk=chunk, num_exact=num_exact)(x, sigma)


def conditional_optimal_denoiser(x, sigma, labels, data, data_labels, **kw):
    """D*(x; σ, c): each query's softmax restricted to the training points of its class."""
    return make_optimal_denoiser(data, data_labels, **kw)(x, sigma, labels)


def optimal_eps(x, s_t, sigma_t, data, **kw):
    """ε*(x; t) = (x − s_t D*(x/s_t; σ_t)) / (s_t σ_t) for a kernel with scale s_t and noise σ_t."""
    return (x - s_t * optimal_denoiser(x / s_t, sigma_t, data, **kw)) / (s_t * sigma_t)


def optimal_score(x, s_t, sigma_t, data, **kw):
    """∇ log p_t(x) = (s_t D*(x/s_t; σ_t) − x) / (s_t² σ_t²)."""
    return (s_t * optimal_denoiser(x / s_t, sigma_t, data, **kw) - x) / (s_t * sigma_t) ** 2


def combine_stats(m, s, num, axis):
    """Merge log-sum-exp statistics (m [R], s [R], num [R, F]) across mesh axis `axis` into (s, num) at the global max."""
    # M = max_d m_d, s = Σ_d s_d e^{m_d − M}, num = Σ_d num_d e^{m_d − M}; shards with m = −inf add nothing
    m_all = lax.pmax(m, axis)
    w = jnp.where(jnp.isfinite(m), jnp.exp(m - m_all), 0.0)
    return lax.psum(s * w, axis), lax.psum(num * w[..., None], axis)


def sharded_optimal_denoiser(data, mesh, axis="data", *, chunk=DEFAULT_CHUNK,
                             num_exact=DEFAULT_NUM_EXACT):
    """D(x, σ) with the training set split over `mesh` axis `axis`, queries replicated.

    Each device reduces its shard to (m, s, num); shards combine exactly:
    M = max_d m_d, s = Σ_d s_d e^{m_d − M}, num = Σ_d num_d e^{m_d − M}.
    """
    from jax.sharding import NamedSharding, PartitionSpec as P
    data = np.asarray(data)                       # host copy: every process places its own shards
    n_dev = mesh.shape[axis]
    flat = data.reshape(data.shape[0], -1)
    pad = (-flat.shape[0]) % n_dev
    flat = np.pad(flat, ((0, pad), (0, 0)))
    valid = np.arange(flat.shape[0]) < data.shape[0]
    spec = NamedSharding(mesh, P(axis))
    flat, valid = jax.device_put(flat, spec), jax.device_put(valid, spec)
    image_shape = data.shape[1:]

    def local(x, sigma, y, ok):
        prep = prepare(y, valid=ok, chunk=chunk)
        m, s, num = partial_stats(x, sigma, prep, None, num_exact)
        m_all = lax.pmax(m, axis)
        w = jnp.where(jnp.isfinite(m), jnp.exp(m - m_all), 0.0)
        return lax.psum(s * w, axis), lax.psum(num * w[:, None], axis)

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axis), P(axis)),
                           out_specs=(P(), P()), check_vma=False)

    @jax.jit
    def _denoise(x, sigma, y, ok):                # the shards are arguments: a multi-process array cannot be closed over
        sig = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        s, num = mapped(x.reshape(x.shape[0], -1), sig, y, ok)
        return (num / s[:, None]).reshape(x.shape)

    def denoise(x, sigma):
        _check_query(x, sigma, image_shape)
        return _denoise(x, sigma, flat, valid)
    return denoise


# ---------------------------------------------------------------- population oracles

def gaussian_denoiser(x, sigma, mu, c):
    """E[y | y + σn = x] for y ~ N(μ, c²I): μ + c²/(c² + σ²)(x − μ)."""
    sigma = jnp.reshape(jnp.asarray(sigma, x.dtype), (-1,) + (1,) * (x.ndim - 1))
    return mu + c ** 2 / (c ** 2 + sigma ** 2) * (x - mu)


def molrg_denoiser(x, sigma, bases, log_pi=None):
    """E[y | y + σn = x] for the MoLRG y = U_k a, a ~ N(0, I_d): Σ_k w_k U_k U_kᵀ x / (1 + σ²).

    x [B, D] (or [B, *shape] flattening to D), bases U [K, D, d] orthonormal columns,
    log_pi [K]; w = softmax_k(log π_k + ‖U_kᵀ x‖² / (2σ²(1 + σ²))).
    """
    shape = x.shape
    x = x.reshape(shape[0], -1)
    var = jnp.broadcast_to(jnp.asarray(sigma, x.dtype) ** 2, (shape[0],))[:, None]   # [B, 1]
    k = bases.shape[0]
    log_pi = jnp.full((k,), -jnp.log(k), x.dtype) if log_pi is None else log_pi
    coef = jnp.einsum("bD,kDd->bkd", x, bases, precision=HIGHEST)                   # [B, K, d]
    logits = log_pi[None] + jnp.sum(coef ** 2, -1) / (2 * var * (1 + var))            # [B, K]
    w = jax.nn.softmax(logits, axis=1)
    proj = jnp.einsum("bkd,kDd->bkD", coef, bases, precision=HIGHEST) / (1 + var[..., None])
    return jnp.einsum("bk,bkD->bD", w, proj).reshape(shape)
