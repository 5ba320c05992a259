"""CIFAR-10, N = 1024 subset, DDPM++ C = 64, VP preconditioning and loss — a GPU/TPU job.

    python -m jaxrepro.main --config=configs/cifar_small.py --workdir=runs/cifar_small

Needs CIFAR-10 prepared for tensorflow-datasets in data.data_dir (or the official
cifar-10-binary.tar.gz in <data_dir>/downloads/manual/). Expected: in the memorization regime
(N = 2^10, the paper's Fig. 3) the network reproduces training images (GL near 0) and agrees
with the optimal denoiser of its training set on a large share of seeds. Runtime: EDM trains
for 50M images (~390k steps of batch 128); this config runs 200k steps of batch 128, hours
on one modern GPU, far too long for a CPU.
"""
from configs import base


def get_config(arg=None):
    del arg
    c = base.get_config()
    c.data.update(name="cifar10", n=1024)
    c.model = dict(name="ddpmpp_c64")
    c.precond = "vp"
    c.loss = dict(kind="vp")
    c.train.update(batch_size=128, num_steps=200_000, lr=1e-3, warmup_images=10_000_000,
                   ema_halflife_images=500_000, augment_p=0.12, log_every=1000, ckpt_every=10_000,
                   sample_every=10_000, num_sample_seeds=64,
                   steps_per_execution=2)     # two optimiser steps per jitted call (see README, Training)
    c.sample.num_seeds = 10_000
    c.generate.num_images = 50_000
    return c
