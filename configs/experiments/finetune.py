"""Fine-tuning (PAPER.md §5): pre-train on one part of the data, fine-tune a parameter subset on another.

    python experiments/finetune.py                  # small: digits 0–4 → 5–9, MLP (CPU, ≈ 3 min)
    python experiments/finetune.py --config=paper   # CIFAR-100 → CIFAR-10, U-ViT-S/2 attention (GPU)

small: the MLP has no attention, so the fine-tuned subset is its last two hidden layers and output
layer (train.trainable = the regex below). paper: U-ViT-S/2 pre-trained on all of CIFAR-100 (390k
steps, ≈ 4 A100-hours), attention layers fine-tuned on CIFAR-10 subsets (100k steps each) and a
U-ViT-S/2 trained from scratch on each subset (390k steps): ≈ 20 GPU-hours for 3 sizes.
"""
from configs.experiments import shared


def get_config(arg="small"):
    c = shared.defaults("finetune", arg or "small")
    c.models_dir = c.out_dir + "/models"      # these runs train on split data: not shared with other experiments
    if c.variant == "small":
        c.pre_classes, c.new_classes = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]   # digits split by label (npz files)
        c.ns = [32, 256]
        c.model = {}                          # the quickstart MLP (4×256)
        c.trainable = r"^params/(fc2|fc3|emb2|emb3|out)/"
        c.pre_steps, c.finetune_steps, c.full_steps = 3000, 1500, 3000
    else:
        c.pre_data, c.new_data = "cifar100", "cifar10"
        c.ns = [1024, 4096, 50_000]
        c.model = {"model": dict(name="uvit_s2"), "train": dict(augment_p=0.0)}   # U-ViT takes no augment labels
        c.trainable = r"/attn/"
        c.pre_steps, c.finetune_steps, c.full_steps = 390_000, 100_000, 390_000
    return c
