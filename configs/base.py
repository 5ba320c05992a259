"""Shared defaults; every other config is a short diff on this one.

    python -m jaxrepro.main --config=configs/base.py --workdir=/tmp/base
"""
import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    """Defaults: digits, N = 32, MLP, EDM loss and preconditioning, Heun 18 steps, 256 seeds."""
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(name="digits", data_dir="", n=32, subset_seed=0))
    c.model = ml_collections.ConfigDict(dict(name="mlp"))          # + any preset field override
    c.precond = "edm"                                              # vp | ve | edm | iddpm
    c.loss = ml_collections.ConfigDict(dict(kind="edm", P_mean=-1.2, P_std=1.2))
    c.train = ml_collections.ConfigDict(dict(
        batch_size=64, num_steps=2000, lr=1e-3, warmup_images=64 * 200, ema_halflife_images=64 * 100,
        ema_rampup=0.05, grad_clip=0.0, augment_p=0.0, log_every=500, ckpt_every=1000, keep_ckpts=3,
        sample_every=0, num_sample_seeds=16,
        # fine-tuning: regex over '/'-joined parameter paths that train ("" = all), and a run whose
        # "ema" or "raw" parameters initialise step 0 ("" = fresh init)
        trainable="", init_from="", init_params="ema",
        compute_dtype="float32",                                   # or bfloat16 (mixed precision on GPU/TPU)
        # optimiser steps per jitted call (> 1 amortises per-call dispatch and, on XLA:CPU, the mapping of
        # the step's buffer of intermediates); gradient-accumulation passes per step (0 = off)
        steps_per_execution=1, micro_batch=0))
    # EDM's ablation sampler: σ grid (discretization edm | vp | ve | iddpm) over [sigma_min, sigma_max]
    # (None: the discretization's default), clamped to the network's trained σ range; time variable
    # schedule linear | vp | ve and scaling none | vp
    c.sample = ml_collections.ConfigDict(dict(
        solver="heun", num_steps=18, discretization="edm", schedule="linear", scaling="none",
        sigma_min=config_dict.placeholder(float), sigma_max=config_dict.placeholder(float), rho=7.0,
        num_seeds=256, first_seed=0))
    c.compare = ml_collections.ConfigDict(dict(descriptor="pixel_cosine", sscd_checkpoint="", fpr=0.01,
                                               gap_images=256))
    c.generate = ml_collections.ConfigDict(dict(num_images=1024, first_seed=0))
    return c
