"""Pieces the paper-figure experiments share: model run directories, sampling, paired scores.

Every model is an ordinary run directory under `models_dir` (config.json + checkpoints, reopened by
`python -m jaxrepro.main --workdir=DIR --mode=compare`); experiments that ask for the same model
(same config, same tag) reuse it. Scores follow PAPER.md §3 on the images as the authors save them
(clipped, uint8-quantized): RP = P(M(x1, x2) > threshold) for seed-matched pairs, the same-image rate
(same L2-nearest training image), GL by Gu et al.'s ratio test and by the descriptor threshold.
"""
import os

import numpy as np

from common import ROOT, digits_config, trained_job, write_results  # noqa: F401  (ROOT puts configs/ on sys.path)
from configs import cifar_small
from jaxrepro import metrics
from jaxrepro.compare import sample_seeds
from jaxrepro.descriptors import get_descriptor
from jaxrepro.models import ModelApply
from jaxrepro.oracle import make_optimal_denoiser
from jaxrepro.precond import make_denoiser


def set_keys(c, overrides):
    """Apply dotted overrides {'train.num_steps': 800, 'model': {...}} to a ConfigDict in place."""
    for key, value in overrides.items():
        *sections, name = key.split(".")
        node = c
        for s in sections:
            node = node[s]
        if hasattr(value, "items") and name != "model" and hasattr(node[name], "update"):
            node[name].update(dict(value))           # a section: merge ({'train': {'lr': 2e-3}})
        else:
            node[name] = dict(value) if hasattr(value, "items") else value    # 'model' is replaced whole
    return c


def base_config(data, n):
    """The run config an experiment starts from: the quickstart (digits) or cifar_small (CIFAR-10) at size n."""
    if data == "digits":
        return digits_config(n)
    c = cifar_small.get_config()
    c.data.name, c.data.n = data, n
    return c


def model_job(cfg, n, tag, overrides=(), log=print):
    """A trained Job for experiment config cfg (data, num_seeds, train_steps), size n and a tagged variant."""
    c = base_config(cfg.data, n)
    steps = int(dict(cfg.get("train_steps_by_n", None) or {}).get(str(n), cfg.train_steps))   # optional per-N length
    set_keys(c, {"train.num_steps": steps, "sample.num_seeds": cfg.num_seeds,
                 "train.log_every": max(1, steps // 2), "train.ckpt_every": steps})
    set_keys(c, dict(overrides))
    workdir = os.path.join(cfg.models_dir, f"{tag}_n{n}")
    return trained_job(c, workdir, log=log)


class Scorer:
    """Paired scores of sample sets from the same seeds against one training set (PAPER.md §3)."""

    def __init__(self, train_images, descriptor="pixel_l2", threshold=None, checkpoint=""):
        kw = {"checkpoint": checkpoint} if descriptor == "sscd" else {}
        self.desc = get_descriptor(descriptor, **kw)
        self.threshold = self.desc.threshold if threshold is None else threshold
        self.train = np.asarray(train_images)
        self.train_feats = self.desc.embed(self.train)
        self._cache = {}

    def _feats(self, x):
        key = id(x)
        if key not in self._cache:
            q = metrics.quantize(x)
            self._cache[key] = (x, q, self.desc.embed(q), np.asarray(metrics.top_k_similar(q, self.train, 1)[1][:, 0]))
        return self._cache[key][1:]

    def pair(self, x1, x2, seeds):
        """{'rp', 'same_image_rate'} of two sample sets [S, ...] drawn from the same seeds."""
        (_, f1, nn1), (_, f2, nn2) = self._feats(x1), self._feats(x2)
        return {"rp": metrics.rp_score(f1, f2, seeds, seeds, self.desc, self.threshold),
                "same_image_rate": float(np.mean(nn1 == nn2))}

    def gl(self, x):
        """{'gl' (Gu ratio test), 'gl_desc' (1 − P(max_i M > threshold))} of one sample set."""
        q, f, _ = self._feats(x)
        return {"gl": metrics.gl_gu(q, self.train),
                "gl_desc": metrics.gl_score(f, self.train_feats, self.desc, self.threshold)}

    def nearest(self, x):
        """Index of the L2-nearest training image of each (quantized) sample [S]."""
        return self._feats(x)[2]


def scorer_for(cfg, job):
    """The Scorer of an experiment config (descriptor, threshold) over a job's training set."""
    return Scorer(job.images, cfg.descriptor, cfg.threshold, cfg.sscd_checkpoint)


def net_fn(job, params=None):
    """The job's EMA network as a denoiser D(x, σ[, labels])."""
    return make_denoiser(ModelApply(job.model), job.ema_params() if params is None else params, job.precond.kind)


def oracle_fn(job):
    """The optimal denoiser of the job's training set (conditional when the job's model is)."""
    return make_optimal_denoiser(job.images, job.labels if job.num_classes else None)


def draw(job, denoise_fn, seeds, solver=None, labels=None, sigmas=None):
    """Samples [S, *shape] of denoise_fn from the job's σ grid and sampler settings (solver overridable)."""
    return sample_seeds(denoise_fn, seeds, job.shape, job.sigmas if sigmas is None else sigmas,
                        solver or job.config.sample.solver, labels=labels, **job.sample_kw)


def parse_args(doc, default_name):
    """--config small|paper, --out DIR (default the config's out_dir), --models DIR."""
    import argparse
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", help="small (digits, CPU) or paper (CIFAR-10, GPU)")
    p.add_argument("--out", default=None, help=f"output folder (default runs/experiments/{default_name})")
    p.add_argument("--models", default=None, help="folder of the model run directories")
    return p.parse_args()


def experiment_main(doc, name, config_module, run, figure=None, figures=None):
    """An experiment's command line: config variant → run(cfg) → results.json, and figure(res, path) as NAME.png
    (or, figure=None, the figures run wrote itself, named by `figures`)."""
    args = parse_args(doc, name)
    cfg = config_module.get_config(args.config)
    cfg.out_dir, cfg.models_dir = args.out or cfg.out_dir, args.models or cfg.models_dir
    res = run(cfg)
    path = write_results(cfg.out_dir, res)
    drawn = figure(res, os.path.join(cfg.out_dir, f"{name}.png")) if figure else figures
    print("wrote", path, "and", drawn)


def panels_figure(panels, path, logx=True, suptitle=""):
    """One row of line-plot panels: panels = [(title, ylabel, {label: (x [k], y [k])}, xlabel)]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, (title, ylabel, series, xlabel) in zip(axes[0], panels):
        for label, (x, y) in series.items():
            ax.plot(x, y, marker="o", ms=3, label=label)
        if logx:
            ax.set_xscale("log")
        ax.set(title=title, ylabel=ylabel, xlabel=xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path, suptitle)


def heatmaps(mats, names, path, suptitle=""):
    """Side-by-side annotated heat maps: mats = {title: [K, K] array}, names [K]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    k = len(names)
    fig, axes = plt.subplots(1, len(mats), figsize=(0.5 * k * len(mats) + 2.5, 0.45 * k + 1.8), squeeze=False)
    for ax, (title, m) in zip(axes[0], mats.items()):
        ax.imshow(np.asarray(m), vmin=0, vmax=1, cmap="viridis")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{m[i][j]:.2f}", ha="center", va="center", fontsize=6,
                        color="w" if m[i][j] < 0.6 else "k")
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, suptitle)


def save_figure(fig, path, suptitle="", dpi=80):
    """Title, layout, save (folders made) and close a figure; returns the path."""
    import matplotlib.pyplot as plt
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
