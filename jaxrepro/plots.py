"""Matplotlib figures from arrays (Agg backend; nothing is shown on screen)."""
import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _to_rgb(img):
    """[H, W, C] in [−1, 1] → displayable [H, W, 3] in [0, 1]."""
    img = np.clip((np.asarray(img, np.float32) + 1) / 2, 0, 1)
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def image_rows(rows, path, row_titles=None, max_cols=16):
    """Save a grid whose r-th row shows rows[r] ([n, H, W, C] in [−1, 1])."""
    n_cols = min(max_cols, max(len(r) for r in rows))
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(0.8 * n_cols, 0.9 * len(rows)), squeeze=False)
    for r, imgs in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(_to_rgb(imgs[c]), interpolation="nearest")
            else:
                ax.axis("off")
        if row_titles:
            axes[r, 0].set_ylabel(row_titles[r], rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.2)
    _save(fig, path)


def line_plot(x, series, path, xlabel, ylabel, title="", logx=True, logy=True):
    """Save a line plot of {name: y values} over x."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, y in series.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    positive = lambda v: len(v) > 0 and np.all(np.asarray(v, np.float64) > 0)   # noqa: E731
    ax.set_xscale("log" if logx and positive(x) else "linear")
    ax.set_yscale("log" if logy and all(positive(y) for y in series.values()) else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def histogram(values, path, threshold=None, xlabel="similarity", title=""):
    """Save histograms of {name: values}, with a vertical line at the threshold."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, v in values.items():
        v = np.asarray(v)
        if v.size:
            ax.hist(v, bins=40 if np.ptp(v) > 1e-5 else 1, alpha=0.6, label=name)   # float32 ties: one bin
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
