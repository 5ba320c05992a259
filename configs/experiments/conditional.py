"""Conditional models (PAPER.md §3, §5): RP_cond and RP_between against the class-conditional oracle.

    python experiments/conditional.py                  # small: digits' 10 classes, N = 64 and 1797 (CPU)
    python experiments/conditional.py --config=paper   # CIFAR-10 classes, DDPM++ C = 128 (GPU)
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("conditional", arg or "small")
    if c.variant == "small":
        c.ns = [64, 1797]
        c.cond_models = {"mlp256_cond": {"model": dict(name="mlp", width=256, depth=4, emb_dim=128, num_classes=10)},
                         "mlp128_cond": {"model": dict(name="mlp", width=128, depth=4, emb_dim=128, num_classes=10)}}
        c.uncond_model = ("mlp256", {})                   # the quickstart MLP (shared with the other experiments)
    else:
        c.ns = [1024, 50_000]
        c.cond_models = {"ddpmpp_c128_cond": {"model": dict(name="ddpmpp_c128", num_classes=10)},
                         "ddpmpp_c64_cond": {"model": dict(name="ddpmpp_c64", num_classes=10)}}
        c.uncond_model = ("ddpmpp_c128", {"model": dict(name="ddpmpp_c128")})
    return c
