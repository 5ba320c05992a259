"""σ-CFDM (Scarvelis, Borde & Solomon, TMLR 2025): how its samples relate to the training set as the smoothing λ grows.

    python experiments/smoothing.py                  # small: digits N = 256, 256 seeds (CPU, ≈ 1 min)
    python experiments/smoothing.py --config=paper   # CIFAR-10 N = 50K, 10K seeds (GPU/TPU)
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("smoothing", arg or "small")
    c.lams = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)   # λ = 0 is Theorem 1; digits are ≈ 3–6 apart in L2
    c.num_noise = 8                                   # perturbations M per evaluation
    c.n = 256 if c.variant == "small" else 50_000
    c.num_reference = 256                             # held-out images: how far a genuinely new image is
    return c
