"""Settings every experiment config shares: where runs go, seeds, descriptor, training length."""
import ml_collections
from ml_collections import config_dict

VARIANTS = ("small", "paper")


def defaults(name, variant):
    """small: digits on a CPU (pixel_l2, fixed threshold −0.25); paper: CIFAR-10 with SSCD at 0.6, 10K seeds."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.name, c.variant = name, variant
    c.out_dir = f"runs/experiments/{name}"
    if variant == "small":
        c.data, c.models_dir = "digits", "runs/experiments/models_figs"      # not models/: other experiments use it
        c.num_seeds, c.train_steps = 256, 4000
        c.descriptor, c.sscd_checkpoint = "pixel_l2", ""
        c.threshold = config_dict.placeholder(float)                          # None: the descriptor's own (−0.25)
    else:
        c.data, c.models_dir = "cifar10", "runs/experiments/models_figs_cifar10"
        c.num_seeds, c.train_steps = 10_000, 390_000                          # 50M images of batch 128 (EDM)
        c.descriptor, c.threshold, c.sscd_checkpoint = "sscd", 0.6, "~/sscd_large"
    return c
