"""Negative control (PAPER.md §4): EDM's stochastic sampler with growing S_churn — reproducibility must fade.

    python experiments/churn.py                  # small: the regimes sweep's two MLPs, N = 32 and 1797 (CPU)
    python experiments/churn.py --config=paper   # CIFAR-10 DDPM++ C = 64 / 128 (GPU; reuses regimes' runs)
"""
from configs.experiments import regimes


def get_config(arg="small"):
    c = regimes.get_config(arg)             # its models (shared run directories)
    c.name, c.out_dir = "churn", "runs/experiments/churn"
    c.ns = [32, 1797] if c.variant == "small" else [64, 32768]
    # γ = min(S_churn / steps, √2 − 1) per step: with 18 steps S_churn ≥ 7.5 saturates
    c.s_churn = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    c.churn_seed_offset = 1_000_000         # the independent-noise pairing draws churn noise from seed + offset
    return c
