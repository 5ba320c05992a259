"""A job assembled from a config: data → model → train → checkpoint → denoiser → sample/compare.

Everything a config names is validated in Job.__init__, before any compute; the workdir's
config.json must agree with the config except for the fields in RESUMABLE.
"""
import json
import os

import jax
import numpy as np

from jaxrepro import compare as compare_lib
from jaxrepro import data as data_lib
from jaxrepro import plots
from jaxrepro.checkpoint import Checkpointer
from jaxrepro.descriptors import get_descriptor
from jaxrepro.kernels import edm_sigmas
from jaxrepro.losses import LossConfig
from jaxrepro.models import ModelApply, forward_flops, get_model, init_params, param_count
from jaxrepro.oracle import make_optimal_denoiser
from jaxrepro.precond import Precond, make_denoiser, with_labels
from jaxrepro.samplers import SOLVERS
from jaxrepro.train import TrainConfig, init_state, make_optimizer, train

# Fields that may change between runs in one workdir (longer training, other seeds, other plots).
RESUMABLE = ("train.num_steps", "train.log_every", "train.ckpt_every", "train.keep_ckpts", "train.sample_every",
             "train.num_sample_seeds", "sample.", "compare.", "generate.", "data.data_dir")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _model_from(config):
    kw = dict(config.model)
    return get_model(kw.pop("name"), **kw)


def info(config):
    """Print the configured model's parameter count and FLOPs per forward pass."""
    images, _ = _load_data(config)
    model = _model_from(config)
    shape = images.shape[1:]
    print(f"{config.model.name}: {param_count(model, shape):,} parameters, "
          f"{forward_flops(model, shape) / 1e9:.3f} GFLOPs per forward pass on {shape}")


def _load_data(config):
    images, labels = data_lib.load_dataset(config.data.name, config.data.data_dir or None)
    return data_lib.subset(images, labels, config.data.n, config.data.subset_seed)


class Job:
    """One configured run in one workdir."""

    def __init__(self, config, workdir, writes=False, log=print):
        self.config, self.workdir, self.log = config, os.path.abspath(workdir), log
        c = config
        self.precond = Precond(c.precond)
        self.loss_cfg = LossConfig(**c.loss)
        self.train_cfg = TrainConfig(**c.train, seed=c.seed)
        if c.compare.descriptor == "sscd":     # fail now, not after training, if the checkpoint is missing
            get_descriptor("sscd", checkpoint=c.compare.sscd_checkpoint)
        elif c.compare.descriptor not in ("pixel_cosine", "pixel_l2"):
            get_descriptor(c.compare.descriptor)
        if c.sample.solver not in SOLVERS:
            raise ValueError(f"unknown solver {c.sample.solver!r}; allowed: {', '.join(SOLVERS)}")
        self.sigmas = edm_sigmas(c.sample.num_steps, c.sample.sigma_min, c.sample.sigma_max, c.sample.rho)
        self.model = _model_from(c)
        self.num_classes = int(getattr(self.model, "num_classes", 0))
        self.images, self.labels = _load_data(c)
        self.shape = self.images.shape[1:]
        try:
            jax.eval_shape(lambda: init_params(self.model, self.shape, 0, self.num_classes > 0))
        except ValueError as err:
            raise ValueError(f"model {c.model.name} cannot take images of shape {self.shape}: {err}") from err
        if self.train_cfg.augment_p > 0 and getattr(self.model, "augment_dim", 0) != 9:
            raise ValueError("train.augment_p > 0 needs a model with augment_dim=9 (DDPM++ presets)")
        self._check_workdir(writes)

    def _check_workdir(self, writes):
        path = os.path.join(self.workdir, "config.json")
        mine = _flat(json.loads(self.config.to_json()))
        if os.path.exists(path):
            with open(path) as f:
                theirs = _flat(json.load(f))
            diff = [k for k in sorted(set(mine) | set(theirs))
                    if mine.get(k) != theirs.get(k) and not any(k.startswith(r) for r in RESUMABLE)]
            if diff:
                raise ValueError(f"{self.workdir} holds a run of a different config ({', '.join(diff[:8])}"
                                 f" differ); use a new --workdir")
        elif not writes:
            raise FileNotFoundError(f"{self.workdir} holds no run (no config.json); train first with --mode=train")
        if writes:
            os.makedirs(self.workdir, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                f.write(self.config.to_json(indent=1))
            os.replace(path + ".tmp", path)

    # ------------------------------------------------------------------ pieces
    def _seeds(self, section):
        s = self.config[section]
        return np.arange(s.first_seed, s.first_seed + (s.num_seeds if "num_seeds" in s else s.num_images))

    def _net(self, params, seeds):
        den = make_denoiser(ModelApply(self.model), params, self.precond.kind)
        return with_labels(den, np.asarray(seeds) % self.num_classes) if self.num_classes else den

    def _oracle(self, seeds):
        if self.num_classes:
            return with_labels(make_optimal_denoiser(self.images, self.labels), np.asarray(seeds) % self.num_classes)
        return make_optimal_denoiser(self.images)

    def ema_params(self):
        """EMA parameters of the newest checkpoint that restores."""
        params = init_params(self.model, self.shape, self.config.seed, self.num_classes > 0)
        like = init_state(params, make_optimizer(self.train_cfg))
        state, step = Checkpointer(os.path.join(self.workdir, "checkpoints")).restore_latest(like)
        if state is None:
            raise FileNotFoundError(f"no checkpoint in {self.workdir}/checkpoints; run --mode=train first")
        self.log(f"loaded EMA parameters of step {step}")
        return state.ema_params

    # ------------------------------------------------------------------ modes
    def train(self):
        c = self.config
        self.log(f"train: {c.model.name} ({param_count(self.model, self.shape):,} params) on {c.data.name} "
                 f"N={len(self.images)} {self.shape}, {self.train_cfg.num_steps} steps of batch {self.train_cfg.batch_size}")
        params = init_params(self.model, self.shape, c.seed, self.num_classes > 0)
        grid_seeds = np.arange(self.train_cfg.num_sample_seeds)

        def sample_grid(ema, step):
            x = compare_lib.sample_seeds(self._net(ema, grid_seeds), grid_seeds, self.shape, self.sigmas,
                                         c.sample.solver)
            plots.image_rows([x], os.path.join(self.workdir, "samples", f"step_{step:07d}.png"))

        return train(self.workdir, self.images, self.labels, ModelApply(self.model), params, self.precond,
                     self.loss_cfg, self.train_cfg, self.num_classes > 0, sample_grid, self.log)

    def sample(self):
        seeds = self._seeds("sample")
        x = compare_lib.sample_seeds(self._net(self.ema_params(), seeds), seeds, self.shape, self.sigmas,
                                     self.config.sample.solver, log=self.log, name="network")
        data_lib.save_npz(os.path.join(self.workdir, "samples.npz"), x, np.asarray(seeds) % max(self.num_classes, 1),
                          seeds=seeds)
        plots.image_rows([x[i:i + 16] for i in range(0, min(len(x), 64), 16)], os.path.join(self.workdir, "samples.png"))
        self.log(f"wrote {len(x)} samples to {self.workdir}/samples.npz")

    def compare(self):
        c = self.config
        seeds = self._seeds("sample")
        kw = {"checkpoint": c.compare.sscd_checkpoint} if c.compare.descriptor == "sscd" else {}
        return compare_lib.compare(self._net(self.ema_params(), seeds), self._oracle(seeds), self.images,
                                   self.workdir, seeds, self.sigmas, c.sample.solver,
                                   get_descriptor(c.compare.descriptor, **kw), c.compare.fpr, c.compare.gap_images,
                                   self.log)

    def generate(self):
        """Teacher data (as the authors' released code does): images from fixed seeds, saved as a data set."""
        seeds = self._seeds("generate")
        x = compare_lib.sample_seeds(self._net(self.ema_params(), seeds), seeds, self.shape, self.sigmas,
                                     self.config.sample.solver, log=self.log, name="teacher")
        path = os.path.join(self.workdir, "generated.npz")
        data_lib.save_npz(path, np.clip(x, -1, 1), np.asarray(seeds) % max(self.num_classes, 1), seeds=seeds)
        self.log(f"wrote {len(x)} generated images to {path}; train on them with data.name='npz:{path}'")
