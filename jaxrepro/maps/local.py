"""Local (LS) and equivariant local (ELS) score machines (Kamb & Ganguli, ICML 2025), patch size per σ.

    LS:  D(x; σ)_p = Σ_i     softmax_i    (−‖x_Ωp − y_i,Ωp‖² / 2σ²) y_i(p)
    ELS: D(x; σ)_p = Σ_{i,q} softmax_{i,q}(−‖x_Ωp − y_i,Ωq‖² / 2σ²) y_i(q)
Ω_p is the P×P window (all channels) centred on pixel p of the image padded by `padding` ("zeros" or
"wrap"); P = P(σ) from the schedule (sizes, edges): P = sizes[#{edges ≤ σ}]. Each machine is Theorem 1's
oracle over a set of patches, queried with the noisy input's patch and read at the patch centre, so it
reuses oracle.partial_stats (chunks, running log-sum-exp, exact re-evaluation of the nearest candidates):
LS per position over the N patches at p, ELS over all N·H·W patches. Memory: the stored patch sets,
N·H·W·P²·C floats per patch size, plus the oracle's O(B·H·W·chunk) working set.
"""
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrepro.oracle import (DEFAULT_CHUNK, DEFAULT_NUM_EXACT, _check_query, combine_stats, partial_stats,
                             prepare)

PADDINGS = ("zeros", "wrap")


def unfold(x, size, padding="zeros"):
    """P×P patches around every pixel: x [B, H, W, C] → [B, H·W, P·P·C] (row-major offsets, then channels)."""
    r = size // 2
    xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="constant" if padding == "zeros" else "wrap")
    b, h, w, c = x.shape
    cols = [xp[:, dy:dy + h, dx:dx + w, :] for dy in range(size) for dx in range(size)]
    return jnp.stack(cols, axis=3).reshape(b, h * w, size * size * c)


def schedule_index(sigma, edges):
    """Index into the schedule's sizes for each σ [B]: #{edges ≤ σ}."""
    if not edges:
        return jnp.zeros(sigma.shape, jnp.int32)
    return jnp.searchsorted(jnp.asarray(edges, sigma.dtype), sigma, side="right").astype(jnp.int32)


def patch_sets(images, size, padding, equivariant, valid=None, chunk=DEFAULT_CHUNK):
    """oracle.prepare of the training patches: ELS one set of N·H·W; LS one set of N per position (leading [H·W])."""
    n, h, w, _ = images.shape
    valid = jnp.ones(n, bool) if valid is None else valid
    pt = unfold(images, size, padding)                                     # [N, HW, F]
    if equivariant:
        return prepare(pt.reshape(n * h * w, -1), valid=jnp.repeat(valid, h * w), chunk=chunk)
    return jax.vmap(lambda p: prepare(p, valid=valid, chunk=chunk))(jnp.swapaxes(pt, 0, 1))


def local_stats(xq, sig, prep, equivariant, num_exact=DEFAULT_NUM_EXACT):
    """Log-sum-exp statistics per query patch: xq [B, HW, F], sig [B] → m [B, HW], s [B, HW], num [B, HW, F]."""
    b, hw, f = xq.shape
    if equivariant:
        m, s, num = partial_stats(xq.reshape(b * hw, f), jnp.repeat(sig, hw), prep, None, num_exact)
        return m.reshape(b, hw), s.reshape(b, hw), num.reshape(b, hw, f)
    m, s, num = lax.map(lambda a: partial_stats(a[0], sig, a[1], None, num_exact),
                        (jnp.swapaxes(xq, 0, 1), prep))                    # [HW, B], [HW, B], [HW, B, F]
    return m.T, s.T, jnp.swapaxes(num, 0, 1)


def _denoise(x, sig, stats_fn, sizes, edges, padding):
    """Dispatch each row to its patch size; a size no row needs is skipped (lax.cond)."""
    idx = schedule_index(sig, edges)                                       # [B]
    c = x.shape[-1]
    out = jnp.zeros_like(x)
    for j, size in enumerate(sizes):
        def branch(_, j=j, size=size):
            s, num = stats_fn(j, unfold(x, size, padding))                 # [B, HW], [B, HW, F]
            k = (size // 2) * size + size // 2                             # the centre offset
            return (num[..., k * c:(k + 1) * c] / s[..., None]).reshape(x.shape)
        use = idx == j
        out_j = lax.cond(jnp.any(use), branch, lambda _: jnp.zeros_like(x), None)
        out = jnp.where(use.reshape((-1,) + (1,) * (x.ndim - 1)), out_j, out)
    return out


@flax.struct.dataclass
class LocalMap:
    """LS (equivariant=False) or ELS (True) machine D(x, σ) over a fixed training set; a pytree for jit."""
    preps: tuple                      # one oracle.prepare dict per patch size
    sizes: tuple = flax.struct.field(pytree_node=False)
    edges: tuple = flax.struct.field(pytree_node=False)
    image_shape: tuple = flax.struct.field(pytree_node=False)
    equivariant: bool = flax.struct.field(pytree_node=False)
    padding: str = flax.struct.field(pytree_node=False)
    num_exact: int = flax.struct.field(pytree_node=False)

    def __call__(self, x, sigma):
        """D(x; σ): x [B, H, W, C], sigma scalar or [B]."""
        _check_query(x, sigma, self.image_shape)
        return _apply(self, x, sigma)


@jax.jit
def _apply(lm, x, sigma):
    sig = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))

    def stats(j, xq):
        _, s, num = local_stats(xq, sig, lm.preps[j], lm.equivariant, lm.num_exact)
        return s, num
    return _denoise(x, sig, stats, lm.sizes, lm.edges, lm.padding)


def check_schedule(sizes, edges, padding="zeros"):
    """(sizes, edges) as tuples, refused unless sizes are odd ≥ 1 and edges ascending, one fewer than sizes."""
    sizes, edges = tuple(int(s) for s in np.atleast_1d(sizes)), tuple(float(e) for e in np.atleast_1d(edges))
    if not sizes or any(s < 1 or s % 2 == 0 for s in sizes):
        raise ValueError(f"patch sizes must be odd integers >= 1, got {sizes}")
    if len(edges) != len(sizes) - 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"need len(sizes) - 1 = {len(sizes) - 1} ascending σ edges, got {edges}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return sizes, edges


def make_local(images, sizes=(3,), edges=(), *, equivariant=False, padding="zeros", chunk=DEFAULT_CHUNK,
               num_exact=DEFAULT_NUM_EXACT):
    """LS / ELS machine over images [N, H, W, C] with patch size sizes[#{edges ≤ σ}] at noise level σ."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be [N >= 1, H, W, C], got shape {images.shape}")
    sizes, edges = check_schedule(sizes, edges, padding)
    data = jnp.asarray(images)
    preps = tuple(patch_sets(data, s, padding, equivariant, chunk=chunk) for s in sizes)
    return LocalMap(preps, sizes, edges, tuple(images.shape[1:]), bool(equivariant), padding, int(num_exact))


def sharded_local(images, mesh, sizes=(3,), edges=(), axis="data", *, equivariant=False, padding="zeros",
                  chunk=DEFAULT_CHUNK, num_exact=DEFAULT_NUM_EXACT):
    """LS / ELS D(x, σ) with the training images split over `mesh` axis `axis`, queries replicated."""
    # each device builds the patch sets of its own images and reduces them to (m, s, num) per query
    # patch; oracle.combine_stats merges the shards exactly
    from jax.sharding import NamedSharding, PartitionSpec as P
    images = np.asarray(images)
    sizes, edges = check_schedule(sizes, edges, padding)
    n_dev = mesh.shape[axis]
    pad = (-images.shape[0]) % n_dev
    data = np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    valid = np.arange(data.shape[0]) < images.shape[0]
    spec = NamedSharding(mesh, P(axis))
    data, valid = jax.device_put(data, spec), jax.device_put(valid, spec)

    def local(xq, sig, y, ok, size):
        prep = patch_sets(y, size, padding, equivariant, ok, chunk)
        return combine_stats(*local_stats(xq, sig, prep, equivariant, num_exact), axis)

    mapped = [jax.shard_map(functools.partial(local, size=s), mesh=mesh, in_specs=(P(), P(), P(axis), P(axis)),
                            out_specs=(P(), P()), check_vma=False) for s in sizes]

    @jax.jit
    def _den(x, sigma, y, ok):
        sig = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        return _denoise(x, sig, lambda j, xq: mapped[j](xq, sig, y, ok), sizes, edges, padding)

    def denoise(x, sigma):
        _check_query(x, sigma, images.shape[1:])
        return _den(x, sigma, data, valid)
    return denoise


def r_squared(pred, ref):
    """1 − Σ‖pred − ref‖² / Σ‖ref − mean_b ref‖² over a batch [B, ...] (ref: the model being explained)."""
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    tot = np.sum((ref - ref.mean(axis=0, keepdims=True)) ** 2)
    return float(1.0 - np.sum((pred - ref) ** 2) / max(tot, 1e-30))


def calibrate(net_fn, images, states, candidates=(1, 3, 5, 7), *, equivariant=True, padding="zeros",
              chunk=DEFAULT_CHUNK):
    """(sizes, edges, {σ: {P: r²}}): the patch size per σ that best explains net_fn (max r²) at states {σ: x}."""
    # states are the queries at each noise level (e.g. the network's own PF-ODE states); the edges sit at
    # the geometric midpoints between consecutive σ, so the schedule picks each σ's best size
    candidates, _ = check_schedule(candidates, np.arange(len(candidates) - 1.0), padding)
    maps = {p: make_local(images, (p,), (), equivariant=equivariant, padding=padding, chunk=chunk) for p in candidates}
    table = {}
    for sigma, x in sorted(states.items()):
        x = jnp.asarray(x)
        ref = np.asarray(net_fn(x, jnp.full((len(x),), sigma, x.dtype)))
        table[float(sigma)] = {p: r_squared(np.asarray(m(x, sigma)), ref) for p, m in maps.items()}
    sig = sorted(table)
    sizes = [max(table[s], key=table[s].get) for s in sig]
    edges = [float(np.sqrt(a * b)) for a, b in zip(sig, sig[1:])]
    keep = [0] + [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]]   # merge equal neighbours
    return tuple(sizes[i] for i in keep), tuple(edges[i - 1] for i in keep[1:]), table
