"""Multi-host runs: start-up, the global mesh, each process's share of batches and seeds, gathering.

One JAX process per host (or per GPU); every process runs the same program (SPMD). Training uses one
mesh over all processes' devices and each process loads only the rows of a global batch that its own
devices hold. Sampling splits the seeds over processes (every seed's image depends on its seed only)
and gathers the images everywhere; process 0 alone writes files. On one machine without a cluster
environment everything here is a no-op.
"""
import os

import jax
import numpy as np
from jax.sharding import Mesh

# environment variables that say this process is one of several (value = how many, or a host list)
CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_NUM_SLICES")


def in_cluster(env=None):
    """True where the environment describes several processes (SLURM, Open MPI, a multi-host TPU slice)."""
    env = os.environ if env is None else env
    for key in CLUSTER_ENV:
        value = env.get(key, "")
        if ("," in value) or (value.isdigit() and int(value) > 1):
            return True
    return False


def initialize(coordinator_address=None, num_processes=None, process_id=None, env=None):
    """jax.distributed.initialize with these arguments, or auto-detected in a cluster; else a no-op.

    Returns True when this is a multi-process run.
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given):
        if not all(given):
            raise ValueError("give all of --coordinator_address, --num_processes and --process_id, or none "
                             f"(got coordinator_address={coordinator_address}, num_processes={num_processes}, "
                             f"process_id={process_id})")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id must be in [0, {num_processes}), got {process_id}")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True
    if in_cluster(env):
        jax.distributed.initialize()   # JAX reads the cluster's own description
        return True
    return False


def is_main():
    """True on the process that writes files and figures (process 0)."""
    return jax.process_index() == 0


def data_mesh(devices=None, axis="data"):
    """1-D mesh over `devices` (default: every device of every process)."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (axis,))


def put_global(sharding, shape, rows, axis=0):
    """A global array [shape] sharded on `axis` (the axes before it whole), each process reading only its own
    rows: rows(slice along axis) → numpy."""
    return jax.make_array_from_callback(shape, sharding, lambda idx: rows(idx[axis]))


def my_seeds(seeds):
    """This process's contiguous share of seeds, padded (with its last seed) to the common share size."""
    seeds = np.asarray(seeds)
    n_proc, pid = jax.process_count(), jax.process_index()
    share = -(-len(seeds) // n_proc)
    mine = seeds[pid * share:(pid + 1) * share]
    fill = mine[-1] if len(mine) else seeds[-1]
    return np.concatenate([mine, np.full(share - len(mine), fill, seeds.dtype)])


def gather_rows(local, total):
    """Rows of every process (each holding `share` rows, the last padded) concatenated, the first `total` kept."""
    if jax.process_count() == 1:
        return np.asarray(local)[:total]
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))[:total]
