"""One process of the two-process tests (tests/test_multihost.py): train, sample, sharded oracle → npz.

    python tests/multihost_worker.py OUT_DIR WORKDIR [COORDINATOR PROCESS_ID]

With a coordinator: one of two jax.distributed processes (one CPU device each); without: one process
(run it with 2 forced CPU devices for the reference).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxrepro import distributed  # noqa: E402

out_dir, workdir = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    distributed.initialize(sys.argv[3], 2, int(sys.argv[4]))

import jax  # noqa: E402

from jaxrepro.compare import sample_seeds  # noqa: E402
from jaxrepro.kernels import edm_sigmas  # noqa: E402
from jaxrepro.losses import LossConfig  # noqa: E402
from jaxrepro.models import ModelApply, get_model, init_params  # noqa: E402
from jaxrepro.oracle import make_optimal_denoiser, sharded_optimal_denoiser  # noqa: E402
from jaxrepro.precond import Precond, make_denoiser  # noqa: E402
from jaxrepro.train import TrainConfig, train  # noqa: E402

assert jax.device_count() == 2, jax.devices()
rng = np.random.default_rng(0)
images = rng.uniform(-1, 1, (24, 4, 4, 1)).astype(np.float32)
labels = np.zeros(24, np.int32)
model = get_model("mlp_tiny")
cfg = TrainConfig(batch_size=8, num_steps=int(os.environ.get("STEPS", "4")), lr=1e-2, warmup_images=40,
                  log_every=2, ckpt_every=2, ema_halflife_images=16,
                  steps_per_execution=int(os.environ.get("STEPS_PER_EXECUTION", "1")))
kill = os.environ.get("KILL_PROCESS_1_AT")        # test hook: process 1 dies while saving this step
state = train(workdir, images, labels, ModelApply(model), init_params(model, (4, 4, 1), 0), Precond("edm"),
              LossConfig("edm"), cfg, log=lambda m: print(f"[{jax.process_index()}] {m}", flush=True),
              _kill_during_save=int(kill) if kill and jax.process_index() == 1 else None)
params = jax.tree_util.tree_map(np.asarray, state.params)             # replicated: every process has them
ema = jax.device_put(jax.tree_util.tree_map(np.asarray, state.ema_params), jax.local_devices()[0])
seeds = np.arange(7)                                                    # not a multiple of the process count
sigmas = edm_sigmas(6)
x_net = sample_seeds(make_denoiser(ModelApply(model), ema, "edm"), seeds, (4, 4, 1), sigmas, "heun")
x_orc = sample_seeds(make_optimal_denoiser(images), seeds, (4, 4, 1), sigmas, "heun")
query = rng.standard_normal((5, 4, 4, 1)).astype(np.float32)
sharded = np.asarray(sharded_optimal_denoiser(images[:23], distributed.data_mesh())(query, 0.3))
if distributed.is_main():
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(os.path.join(out_dir, "out.npz"), x_net=x_net, x_orc=x_orc, sharded=sharded, query=query, **flat)
print(f"[{jax.process_index()}] done", flush=True)
