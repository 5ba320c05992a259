"""Cross-model matrix (PAPER.md §5, the paper's Fig. 2): RP for every pair of architecture, kernel, sampler.

    python experiments/cross_model.py                  # small: digits, N = 32 and 1797 (CPU)
    python experiments/cross_model.py --config=paper   # CIFAR-10, N = 2^10 and 50,000 (GPU)
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("cross_model", arg or "small")
    c.solvers = ["euler", "heun", "ddim", "dpmpp2m"]       # applied to the reference model
    if c.variant == "small":
        c.ns = [32, 1797]
        c.models = {"mlp256": {},                                                 # quickstart MLP, EDM
                    "mlp256_vp": {"precond": "vp", "loss": dict(kind="vp")},
                    "mlp256_ve": {"precond": "ve", "loss": dict(kind="ve")},
                    # convolutional / transformer nets cost 10-50× an MLP step on a CPU: smaller and shorter
                    "ddpmpp_micro": {"model": dict(name="ddpmpp_tiny", model_channels=8, channel_mult=[1],
                                                   attn_resolutions=[]), "train": dict(num_steps=600)},
                    "uvit_tiny": {"model": dict(name="uvit_tiny", patch_size=2), "train": dict(num_steps=800)}}
        c.reference = "mlp256"
    else:
        c.ns = [1024, 50_000]
        c.models = {"ddpmpp_c128_vp": {"model": dict(name="ddpmpp_c128")},
                    "ddpmpp_c128_ve": {"model": dict(name="ddpmpp_c128"), "precond": "ve", "loss": dict(kind="ve")},
                    "ddpmpp_c128_edm": {"model": dict(name="ddpmpp_c128"), "precond": "edm",
                                        "loss": dict(kind="edm", P_mean=-1.2, P_std=1.2)},
                    "uvit_s2_vp": {"model": dict(name="uvit_s2"), "train": dict(augment_p=0.0)}}   # no augment labels
        c.reference = "ddpmpp_c128_vp"
    return c
