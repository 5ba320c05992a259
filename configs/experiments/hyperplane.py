"""Noise hyperplane and basins (PAPER.md §3): which training image each point of a noise plane lands on.

    python experiments/hyperplane.py                  # small: two MLPs (regimes' models) + oracle, N = 32
    python experiments/hyperplane.py --config=paper   # CIFAR-10 DDPM++ C = 64 / 128, N = 64
"""
from configs.experiments import regimes


def get_config(arg="small"):
    c = regimes.get_config(arg)           # its models (shared run directories) at one memorization-regime N
    c.name, c.out_dir = "hyperplane", "runs/experiments/hyperplane"
    c.n = 32 if c.variant == "small" else 64
    c.plane_seeds = [0, 1, 2]             # ε1, ε2, ε3 = latents of these seeds
    c.grid = 40                           # grid × grid points
    c.extent = (-1.0, 2.0)                # α, β range (ε1 at (0, 0), ε2 at (1, 0), ε3 at (0, 1))
    return c
