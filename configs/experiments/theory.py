"""Theory vs experiment (PAPER.md §5): RP(model, optimal denoiser) and the denoiser gap against σ and N.

    python experiments/theory.py                  # small: the regimes sweep's MLPs (digits, CPU)
    python experiments/theory.py --config=paper   # CIFAR-10 DDPM++ C = 64 / 128 (GPU; reuses regimes' runs)
"""
from configs.experiments import regimes


def get_config(arg="small"):
    c = regimes.get_config(arg)          # the same models as the regimes sweep (shared run directories)
    c.name, c.out_dir = "theory", "runs/experiments/theory"
    # (network solver, oracle solver): same solver for both, and the authors' mismatch (oracle Euler 18)
    c.pairs = [("heun", "heun"), ("euler", "euler"), ("heun", "euler")]
    return c
