"""Inverse problems (PAPER.md §5): deterministic DPS with two networks and the optimal denoiser.

    python experiments/inverse_problems.py                  # small: digits, N = 32 and 1797 (CPU, ≈ 2 min)
    python experiments/inverse_problems.py --config=paper   # CIFAR-10, N = 1024 and 50,000 (GPU)

paper costs: the two models of experiments/cross_model.py (DDPM++ C = 128 VP and U-ViT-S/2 VP, ≈ 10
A100-hours each to train, reused when present) plus 3 operators × 3 denoisers × 1,000 images × 100 DPS
steps, each a forward and a backward pass (≈ 1 GPU-hour with the oracle of 50,000 images).
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("inverse_problems", arg or "small")
    c.operators = ["inpaint", "sr2", "blur"]   # centre box of half the side, 2× average pool, Gaussian blur
    c.step_size = 0.3                          # ζ: ξ_i = ζ (1 + σ_i²) / ‖z − A(x̂_0)‖ (inverse.dps_sample)
    c.dps_steps = 50                           # EDM ρ-grid [0.002, 80] + a final step to σ = 0
    if c.variant == "small":
        c.ns = [32, 1797]
        c.num_images = 64                      # measured images: held out of the N training images when N < 1797
        c.blur_sigma = 1.0
        c.models = {"mlp256": {}, "mlp256_vp": {"precond": "vp", "loss": dict(kind="vp")}}
    else:
        c.ns = [1024, 50_000]
        c.num_images = 1000                    # CIFAR-10 test images
        c.blur_sigma = 2.0
        c.models = {"ddpmpp_c128_vp": {"model": dict(name="ddpmpp_c128")},
                    "uvit_s2_vp": {"model": dict(name="uvit_s2"), "train": dict(augment_p=0.0)}}   # no augment labels
    return c
