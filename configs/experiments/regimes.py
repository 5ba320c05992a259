"""Regimes (PAPER.md §5, the paper's Fig. 3): memorization → dip → generalization as N grows.

    python experiments/regimes.py                  # small: digits, N = 16 … 1024 and 1797, two MLP widths (CPU)
    python experiments/regimes.py --config=paper   # CIFAR-10, N = 2^6 … 2^15, DDPM++ C = 64 / 128 (GPU)

Per N: same-image rate and RP of each model against the optimal denoiser of its training set, RP
between the capacities (same seeds), GL of each model and of the oracle, the denoiser gap.
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("regimes", arg or "small")
    if c.variant == "small":
        c.ns = [16, 32, 64, 128, 256, 512, 1024, 1797]
        c.capacities = {"mlp128": {"model": dict(name="mlp", width=128, depth=4, emb_dim=128)},
                        "mlp256": {}}                       # the quickstart's 4×256 MLP
    else:
        c.ns = [2 ** k for k in range(6, 16)]
        c.capacities = {"ddpmpp_c64": {"model": dict(name="ddpmpp_c64")},
                        "ddpmpp_c128": {"model": dict(name="ddpmpp_c128")}}
    c.gap_images = 256
    return c
