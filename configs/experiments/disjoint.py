"""Disjoint training sets (Kadkhodaie et al., ICLR 2024): two models on non-overlapping halves vs two on the same set.

    python experiments/disjoint.py                  # small: digits, N per half ∈ {16, 128, 898}, 4×256 MLPs (CPU, ≈ 3 min)
    python experiments/disjoint.py --config=paper   # CIFAR-10, N per half 2^6 … 2^14 and 25K, DDPM++ C = 64 (GPU/TPU)
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("disjoint", arg or "small")
    if c.variant == "small":
        c.ns = [16, 128, 898]            # per half; digits has 1,797 images, so 898 per half at most
        c.train_steps = 4000             # = regimes' small sweep (shared default): its first-half MLPs are shared
        c.tag, c.model = "mlp256", {}    # the quickstart 4×256 MLP
    else:
        c.ns = [2 ** k for k in range(6, 15, 2)] + [25_000]
        c.tag, c.model = "ddpmpp_c64", {"model": dict(name="ddpmpp_c64")}
    c.subset_seed = 0                    # the permutation both halves are cut from (data.subset's)
    return c
