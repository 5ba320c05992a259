"""Mixture of low-rank Gaussians (Wang et al. 2024): a data set whose population oracle is known.

    python -m jaxrepro.main --config=configs/molrg.py --workdir=runs/molrg

Vectors in D = 16 from K = 3 classes of rank-2 subspaces; an MLP trained on N = 64 samples is
compared with the empirical optimal denoiser of those 64 points. Minutes on a CPU.
"""
from configs import base


def get_config(arg=None):
    del arg
    c = base.get_config()
    c.data.update(name="molrg", n=64)
    c.model = dict(name="mlp", width=256, depth=4, emb_dim=64)
    c.train.update(num_steps=4000, log_every=1000, ckpt_every=2000)
    c.compare.gap_images = 64
    c.compare.fpr = 0.05          # ≈ 1/N of different-seed pairs share a training image
    return c
