"""Fine-tuning: pre-train on one part of the data, fine-tune a parameter subset on another (PAPER.md §5).

    python experiments/finetune.py [--config small|paper] [--out DIR] [--models DIR]

A model is pre-trained on the pre-training data (small: digits 0–4; paper: CIFAR-100); for each N a copy
is fine-tuned on N images of the new data (small: digits 5–9; paper: CIFAR-10) with only the parameters
matching cfg.trainable moving (train.init_from + train.trainable, ordinary run directories), and a model of
the same architecture is trained on the same N images from scratch. All are sampled from the same seeds;
reports RP and same-image rate of fine-tuned vs fully trained (and vs the pre-trained model), and GL (Gu
ratio test) against the N new images; writes results.json and finetune.png.
"""
import os

import numpy as np

import repro_tools as rt
from common import Progress, write_results
from configs.experiments import finetune as finetune_config
from jaxrepro import data as data_lib
from jaxrepro import plots


def split_data(cfg):
    """(pre-training data name, new data name): npz files of the digits split by label, or data set names."""
    if cfg.variant != "small":
        return cfg.pre_data, cfg.new_data
    images, labels = data_lib.load_dataset("digits")
    names = []
    for part, classes in (("pre", cfg.pre_classes), ("new", cfg.new_classes)):
        keep = np.isin(labels, list(classes))
        path = os.path.abspath(os.path.join(cfg.out_dir, f"digits_{part}.npz"))
        if not os.path.exists(path):
            data_lib.save_npz(path, images[keep], labels[keep])
        names.append(f"npz:{path}")
    return names


def run(cfg, log=print):
    quiet = lambda *a: None   # noqa: E731
    pre_name, new_name = split_data(cfg)
    n_pre = len(data_lib.load_dataset(pre_name)[0]) if pre_name.startswith("npz:") else 50_000
    prog = Progress(1 + 2 * len(cfg.ns), log)
    pre = rt.model_job(cfg, n_pre, "pre", {**cfg.model, "data.name": pre_name, "train.num_steps": cfg.pre_steps},
                       log=quiet)
    prog.step(f"pre-trained on {pre_name.split('/')[-1]} (N={n_pre})")
    seeds = np.arange(cfg.num_seeds)
    out = {"config": cfg.to_dict(), "n_pre": n_pre, "regimes": []}
    x_pre = rt.draw(pre, rt.net_fn(pre), seeds)
    rows, titles = [x_pre[:16]], ["pre-trained"]
    for n in cfg.ns:
        new = {**cfg.model, "data.name": new_name}
        full = rt.model_job(cfg, n, "full", {**new, "train.num_steps": cfg.full_steps}, log=quiet)
        prog.step(f"N={n} trained from scratch")
        tuned = rt.model_job(cfg, n, "tuned", {**new, "train.num_steps": cfg.finetune_steps,
                                               "train.init_from": pre.workdir, "train.trainable": cfg.trainable},
                             log=quiet)
        prog.step(f"N={n} fine-tuned")
        xs = {"full": rt.draw(full, rt.net_fn(full), seeds), "tuned": rt.draw(tuned, rt.net_fn(tuned), seeds),
              "pre": x_pre, "oracle": rt.draw(full, rt.oracle_fn(full), seeds)}
        sc = rt.scorer_for(cfg, full)
        rec = {"n": int(n)}
        for a, b in [("tuned", "full"), ("tuned", "pre"), ("full", "pre"), ("tuned", "oracle"), ("full", "oracle")]:
            rec[f"{a}|{b}"] = sc.pair(xs[a], xs[b], seeds)
        rec["gl"] = {k: sc.gl(xs[k])["gl"] for k in ("full", "tuned")}
        log(f"N={n}: RP(tuned, full) {rec['tuned|full']['rp']:.3f}, RP(tuned, pre) {rec['tuned|pre']['rp']:.3f}, "
            f"GL full {rec['gl']['full']:.3f} tuned {rec['gl']['tuned']:.3f}")
        out["regimes"].append(rec)
        rows += [xs["full"][:16], xs["tuned"][:16]]
        titles += [f"N={n} full", f"N={n} tuned"]
    plots.image_rows(rows, os.path.join(cfg.out_dir, "finetune.png"), titles)
    return out


def main():
    args = rt.parse_args(__doc__, "finetune")
    cfg = finetune_config.get_config(args.config)
    cfg.out_dir = args.out or cfg.out_dir
    cfg.models_dir = args.models or os.path.join(cfg.out_dir, "models")
    res = run(cfg)
    print("wrote", write_results(cfg.out_dir, res), "and finetune.png")


if __name__ == "__main__":
    main()
