"""Which analytic map does a trained denoiser follow? r² and gap vs N for Theorem 1, LS, ELS, σ-CFDM, population.

    python experiments/which_map.py                  # small: digits MLPs (+ DDPM++ tiny) and MoLRG MLPs (CPU, ≈ 6 min + training)
    python experiments/which_map.py --config=paper   # CIFAR-10 DDPM++ C = 64 across N (GPU/TPU; see the script)
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("which_map", arg or "small")
    c.num_queries = 16                 # PF-ODE trajectories (seeds) whose states are the queries
    c.sigma_stride = 3                 # every 3rd σ of the 18-step EDM grid (+ the last): 7 noise levels
    c.candidates = (1, 3, 5, 7, 15)    # patch sizes the calibration picks from per σ; 15 covers an 8×8 image
    c.lams = (0.25, 0.5, 1.0, 2.0)     # σ-CFDM smoothing λ; the best per model is reported (and all)
    c.num_noise = 8                    # σ-CFDM perturbations M
    if c.variant == "small":
        c.ns = [16, 64, 256, 1797]
        c.train_steps = 4000           # = regimes' small sweep (shared default), so its MLP run directories are shared
        c.models = {"mlp256": {}}      # the quickstart 4×256 MLP (regimes' tag)
        c.ddpm_ns = [64, 1797]
        c.ddpm = {"model": dict(name="ddpmpp_tiny"),
                  "train": dict(num_steps=800, batch_size=64, ckpt_every=800, log_every=400)}
        c.molrg_ns = [8, 16, 32, 64, 128, 256, 1024]
        c.molrg_steps = 1200
        c.molrg_capacities = {"mlp64x2": dict(name="mlp", width=64, depth=2, emb_dim=32),
                              "mlp256x4": dict(name="mlp", width=256, depth=4, emb_dim=64)}
    else:
        c.ns = [2 ** k for k in range(6, 16, 2)] + [50_000]
        c.models = {"ddpmpp_c64": {"model": dict(name="ddpmpp_c64")}}
        c.ddpm_ns, c.ddpm = [], {}
        c.candidates = (1, 3, 5, 7, 9, 11, 15)   # a 63×63 (whole-image) patch set would be 2.4 TB
        c.molrg_ns = [8, 16, 32, 64, 128, 256, 512, 1024]
        c.molrg_steps = 4000
        c.molrg_capacities = {"mlp64x2": dict(name="mlp", width=64, depth=2, emb_dim=32),
                              "mlp256x4": dict(name="mlp", width=256, depth=4, emb_dim=64),
                              "mlp1024x4": dict(name="mlp", width=1024, depth=4, emb_dim=128)}
    return c
