"""The training data stream: which rows each step reads, the global batch arrays built from them, and how
many steps each jitted call takes.

The batch of step s is a pure function of (seed, s): epoch e reads the data in the permutation
rng([seed, e]), and example j of the stream (position p = s·B + j) keeps p as its identity, from which
the step draws its σ, noise, dropout mask and augmentation — so nothing depends on the device count.
"""
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrepro import distributed


def batch_positions(step, batch_size, n, seed):
    """(data indices [B], stream positions [B]) of a step: epoch e uses permutation rng([seed, e])."""
    pos = step * batch_size + np.arange(batch_size, dtype=np.int64)
    idx = np.empty(batch_size, np.int64)
    for e in np.unique(pos // n):
        sel = pos // n == e
        idx[sel] = np.random.default_rng([seed, int(e)]).permutation(n)[pos[sel] % n]
    return idx, pos


def global_batches(mesh, step, k, batch_size, seed, images, labels):
    """(images, labels, positions) of steps step … step+k−1 as global arrays sharded over the batch axis:
    [B, ...] for k = 1, [k, B, ...] otherwise; each process reads only its own rows of the data."""
    if (step + k) * batch_size > 2 ** 31:           # positions travel as int32
        raise ValueError(f"step {step + k} of batch {batch_size} passes 2^31 data-stream positions")
    picks = [batch_positions(s, batch_size, len(images), seed) for s in range(step, step + k)]
    idx, pos = np.stack([p[0] for p in picks]), np.stack([p[1] for p in picks]).astype(np.int32)   # [k, B]
    lead = (k,) if k > 1 else ()                   # one step: [B, ...], as the one-step function takes it
    if not lead:
        idx, pos = idx[0], pos[0]
    shard = NamedSharding(mesh, P(*(None,) * len(lead), "data"))

    def put(shape, rows):                          # rows(row slice) → this process's block, all k steps
        return distributed.put_global(shard, (*lead, batch_size, *shape), rows, axis=len(lead))
    return [put(a.shape[1:], lambda r, a=a: a[idx[..., r]]) for a in (images, labels)] + \
        [put((), lambda r: pos[..., r])]


def call_length(step, k, num_steps, every):
    """Steps the call starting at `step` takes: k if no multiple of an interval in `every` (0 = off) and not
    num_steps falls inside it — those steps log, checkpoint or sample — else 1. The same on every process."""
    upcoming = min([num_steps] + [(step // e + 1) * e for e in every if e])
    return k if step + k <= upcoming else 1
