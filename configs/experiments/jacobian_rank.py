"""Denoiser Jacobian rank vs σ and N (companion paper, PAPER.md §5): a trained network and the oracle.

    python experiments/jacobian_rank.py                  # small: digits, d = 64 (CPU, ≈ 1 min)
    python experiments/jacobian_rank.py --config=paper   # CIFAR-10, d = 3072 (GPU)

paper costs: one full Jacobian is 3072 jvps (48 chunks of 64); for DDPM++ C = 128 that is ≈ 250 TFLOP,
≈ 15 s on an A100, so 8 points × 12 σ × 2 regimes ≈ 1 GPU-hour, plus the models of cross_model.py.
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("jacobian_rank", arg or "small")
    c.sigmas = [0.002, 0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 80.0]
    c.num_points = 8                           # x = y_i + σ n at the first training images y_i
    c.energy = 0.99
    c.chunk = 64                               # basis vectors per batched jvp
    if c.variant == "small":
        c.oracle_ns = [32, 128, 512, 1797]
        c.model_ns = [32, 1797]
        c.model = ("mlp256", {})
    else:
        c.oracle_ns = [1024, 4096, 16_384, 50_000]
        c.model_ns = [1024, 50_000]
        c.model = ("ddpmpp_c128_vp", {"model": dict(name="ddpmpp_c128")})
    return c
