"""Invertibility (PAPER.md §2): encode images with one model's PF-ODE, decode with another's.

    python experiments/invertibility.py                  # small: digits, N = 32 and 1797 (CPU, ≈ 1 min)
    python experiments/invertibility.py --config=paper   # CIFAR-10, N = 1024 and 50,000 (GPU)

paper costs: the models of experiments/cross_model.py (reused) plus 2 regimes × 2 models × 1,000
images × (encode + 2 decodes) × 2·64 Heun evaluations (≈ 1 GPU-hour for DDPM++ C = 128).
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("invertibility", arg or "small")
    c.ode_steps = 64                           # Heun on the EDM ρ-grid [0.002, 80], no step to σ = 0
    if c.variant == "small":
        c.ns = [32, 1797]
        c.num_images = 64                      # half training images, half held out (when N < 1797)
        c.models = {"mlp256": {}, "mlp256_vp": {"precond": "vp", "loss": dict(kind="vp")}}
    else:
        c.ns = [1024, 50_000]
        c.num_images = 1000
        c.models = {"ddpmpp_c128_vp": {"model": dict(name="ddpmpp_c128")},
                    "uvit_s2_vp": {"model": dict(name="uvit_s2"), "train": dict(augment_p=0.0)}}   # no augment labels
    return c
