"""A job assembled from a config: data → model → train → checkpoint → denoiser → sample/compare.

Everything a config names is validated in Job.__init__, before any compute; the workdir's
config.json must agree with the config except for the fields in RESUMABLE.
"""
import json
import os

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrepro import compare as compare_lib
from jaxrepro import data as data_lib
from jaxrepro import distributed, plots
from jaxrepro.checkpoint import Checkpointer
from jaxrepro.descriptors import get_descriptor
from jaxrepro.kernels import sampling_range, sigma_grid
from jaxrepro.losses import LossConfig
from jaxrepro.models import ModelApply, forward_flops, get_model, init_params, param_count
from jaxrepro.oracle import make_optimal_denoiser
from jaxrepro.precond import Precond, make_denoiser
from jaxrepro.samplers import SOLVERS
from jaxrepro.train import TrainConfig, init_state, make_optimizer, train

# Fields that may change between runs in one workdir (longer training, other seeds, other plots).
# How the steps are executed may change too: it moves results only by float rounding.
RESUMABLE = ("train.num_steps", "train.log_every", "train.ckpt_every", "train.keep_ckpts", "train.sample_every",
             "train.num_sample_seeds", "train.steps_per_execution", "train.micro_batch", "sample.", "compare.",
             "generate.", "data.data_dir")
# Fields added after runs existed: a config.json without them holds their default.
ADDED_DEFAULTS = {"train.trainable": "", "train.init_from": "", "train.init_params": "ema", "train.compute_dtype": "float32"}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_workdir_config(workdir):
    """The ConfigDict of a workdir's config.json (JSON lists back to tuples, as the config files write them)."""
    def tuples(v):
        if isinstance(v, dict):
            return {k: tuples(x) for k, x in v.items()}
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    with open(os.path.join(workdir, "config.json")) as f:
        return ml_collections.ConfigDict(tuples(json.load(f)))


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


def _check_counts(c):
    """Sample/compare settings that would fail only after training."""
    if c.sample.solver not in SOLVERS:
        raise ValueError(f"unknown solver {c.sample.solver!r}; allowed: {', '.join(SOLVERS)}")
    for key in ("sample.num_seeds", "generate.num_images", "compare.gap_images"):
        section, name = key.split(".")
        if int(c[section][name]) < 1:
            raise ValueError(f"{key} must be >= 1, got {c[section][name]}")
    if not 0 < c.compare.fpr < 1:
        raise ValueError(f"compare.fpr must be in (0, 1), got {c.compare.fpr}")


def sampler_settings(s, precond):
    """(σ grid, sampler kwargs) of a config's sample section: EDM's ablation sampler settings, the range
    clamped to what the network was trained for and the grid rounded as the network rounds σ."""
    lo, hi = sampling_range(s.discretization, s.sigma_min, s.sigma_max, precond.sigma_range)
    extra = {"rho": s.rho} if s.discretization == "edm" else {}
    if s.discretization == "edm" and not s.rho > 0:
        raise ValueError(f"sample.rho must be > 0, got {s.rho}")
    grid = sigma_grid(s.discretization, s.num_steps, sigma_min=lo, sigma_max=hi, **extra)
    grid = np.append(np.asarray(precond.round_sigma(grid[:-1]), np.float64), 0.0)
    if precond.kind == "iddpm":     # rounding may merge neighbours; the sampler needs a decreasing grid
        grid = np.append(np.unique(grid[:-1])[::-1], 0.0)
    return grid, dict(schedule=s.schedule, scaling=s.scaling, sigma_range=(lo, hi))


class Job:
    """One configured run in one workdir."""

    def __init__(self, config, workdir, writes=False, log=print):
        self.config, self.workdir, self.log = config, os.path.abspath(workdir), log
        c = config
        self.precond = Precond(c.precond)
        self.loss_cfg = LossConfig(**c.loss)
        self.train_cfg = TrainConfig(**c.train, seed=c.seed)
        _check_counts(c)
        if c.compare.descriptor == "sscd":     # fail now, not after training, if the checkpoint is missing
            get_descriptor("sscd", checkpoint=c.compare.sscd_checkpoint)
        elif c.compare.descriptor not in ("pixel_cosine", "pixel_l2"):
            get_descriptor(c.compare.descriptor)
        self.sigmas, self.sample_kw = sampler_settings(c.sample, self.precond)
        self.model = _model_from(c)
        self.num_classes = int(getattr(self.model, "num_classes", 0))
        self.images, self.labels = _load_data(c)
        if len(self.images) < 2:
            raise ValueError(f"data.n={len(self.images)}: comparisons need >= 2 training images (the ratio test "
                             f"uses the two nearest)")
        self.shape = self.images.shape[1:]
        if self.num_classes:       # seed s samples class s mod K: the conditional oracle needs images of each
            wanted = set((self._seeds("sample") % self.num_classes).tolist())
            missing = sorted(wanted - set(np.asarray(self.labels).tolist()))
            if missing:
                raise ValueError(f"a conditional run samples class (seed mod {self.num_classes}) for every seed, but "
                                 f"{c.data.name} N={len(self.images)} has no image of class {missing[:10]}")
        try:
            jax.eval_shape(lambda: init_params(self.model, self.shape, 0, self.num_classes > 0))
        except ValueError as err:
            raise ValueError(f"model {c.model.name} cannot take images of shape {self.shape}: {err}") from err
        src = self.train_cfg.init_from
        if src and not os.path.exists(os.path.join(src, "config.json")):
            raise FileNotFoundError(f"train.init_from={src!r} holds no run (no config.json)")
        if src and os.path.abspath(src) == self.workdir:
            raise ValueError(f"train.init_from={src!r} is this run's own workdir")
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
                    if mine.get(k, ADDED_DEFAULTS.get(k)) != theirs.get(k, ADDED_DEFAULTS.get(k))
                    and not any(k.startswith(r) for r in RESUMABLE)]
            if diff:
                raise ValueError(f"{self.workdir} holds a run of a different config ({', '.join(diff[:8])}"
                                 f" differ); use a new --workdir")
        elif not writes:
            raise FileNotFoundError(f"{self.workdir} holds no run (no config.json); train first with --mode=train")
        if writes and distributed.is_main():
            os.makedirs(self.workdir, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                f.write(self.config.to_json(indent=1))
            os.replace(path + ".tmp", path)

    # ------------------------------------------------------------------ pieces
    def _seeds(self, section):
        s = self.config[section]
        return np.arange(s.first_seed, s.first_seed + (s.num_seeds if "num_seeds" in s else s.num_images))

    def _labels(self, seeds):
        """Class of each seed (seed mod K) for a conditional run; None otherwise."""
        return np.asarray(seeds) % self.num_classes if self.num_classes else None

    def _net(self, params):
        return make_denoiser(ModelApply(self.model), params, self.precond.kind)

    def _oracle(self):
        return make_optimal_denoiser(self.images, self.labels if self.num_classes else None)

    def _sample(self, params, seeds, name=None):
        log = self.log if name else None
        return compare_lib.sample_seeds(self._net(params), seeds, self.shape, self.sigmas, self.config.sample.solver,
                                        log=log, name=name or "", labels=self._labels(seeds), **self.sample_kw)

    def ema_params(self, which="ema"):
        """EMA (which="ema") or raw parameters of the newest checkpoint that restores, on the first local device."""
        params = init_params(self.model, self.shape, self.config.seed, self.num_classes > 0)
        repl = NamedSharding(distributed.data_mesh(), PartitionSpec())           # restored on every process
        like = jax.device_put(init_state(params, make_optimizer(self.train_cfg)), repl)
        with Checkpointer(os.path.join(self.workdir, "checkpoints")) as ckpt:
            state, step = ckpt.restore_latest(like)
        if state is None:
            raise FileNotFoundError(f"no checkpoint in {self.workdir}/checkpoints; run --mode=train first")
        self.log(f"loaded {'EMA' if which == 'ema' else 'raw'} parameters of step {step}")
        # process-local copies: each process samples its own share of the seeds
        chosen = state.ema_params if which == "ema" else state.params
        return jax.device_put(jax.tree_util.tree_map(np.asarray, chosen), jax.local_devices()[0])

    def _initial_params(self):
        """Step-0 parameters: a fresh init, or train.init_from's checkpoint (same model shapes required)."""
        params = init_params(self.model, self.shape, self.config.seed, self.num_classes > 0)
        src = self.train_cfg.init_from
        if not src:
            return params
        source = Job(load_workdir_config(src), src, log=self.log).ema_params(self.train_cfg.init_params)
        ours, theirs = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (params, source))
        shapes = lambda leaves: {jax.tree_util.keystr(k): np.shape(v) for k, v in leaves}   # noqa: E731
        if shapes(ours) != shapes(theirs):
            bad = sorted(set(shapes(ours).items()) ^ set(shapes(theirs).items()))[:4]
            raise ValueError(f"train.init_from={src!r} holds a different model; first mismatches: {bad}")
        self.log(f"initialised from {src} ({self.train_cfg.init_params} parameters)")
        return jax.tree_util.tree_map(lambda a, b: np.asarray(b, np.asarray(a).dtype), params, source)

    # ------------------------------------------------------------------ modes
    def train(self, fresh_start=False):
        c = self.config
        self.log(f"train: {c.model.name} ({param_count(self.model, self.shape):,} params) on {c.data.name} "
                 f"N={len(self.images)} {self.shape}, {self.train_cfg.num_steps} steps of batch {self.train_cfg.batch_size}")
        params = self._initial_params()
        grid_seeds = np.arange(self.train_cfg.num_sample_seeds)

        def sample_grid(ema, step):
            x = self._sample(jax.tree_util.tree_map(np.asarray, ema), grid_seeds)
            if distributed.is_main():
                plots.image_rows([x], os.path.join(self.workdir, "samples", f"step_{step:07d}.png"))

        return train(self.workdir, self.images, self.labels, ModelApply(self.model), params, self.precond,
                     self.loss_cfg, self.train_cfg, self.num_classes > 0, sample_grid, self.log, fresh_start=fresh_start)

    def sample(self):
        seeds = self._seeds("sample")
        x = self._sample(self.ema_params(), seeds, "network")
        if not distributed.is_main():
            return
        data_lib.save_npz(os.path.join(self.workdir, "samples.npz"), x, np.asarray(seeds) % max(self.num_classes, 1),
                          seeds=seeds)
        plots.image_rows([x[i:i + 16] for i in range(0, min(len(x), 64), 16)], os.path.join(self.workdir, "samples.png"))
        self.log(f"wrote {len(x)} samples to {self.workdir}/samples.npz")

    def compare(self):
        c = self.config
        seeds = self._seeds("sample")
        kw = {"checkpoint": c.compare.sscd_checkpoint} if c.compare.descriptor == "sscd" else {}
        return compare_lib.compare(self._net(self.ema_params()), self._oracle(), self.images, self.workdir, seeds,
                                   self.sigmas, c.sample.solver, get_descriptor(c.compare.descriptor, **kw),
                                   c.compare.fpr, c.compare.gap_images, self.log, labels=self._labels(seeds),
                                   train_labels=self.labels if self.num_classes else None, **self.sample_kw)

    def generate(self):
        """Teacher data (as the authors' released code does): images from fixed seeds, saved as a data set."""
        seeds = self._seeds("generate")
        x = self._sample(self.ema_params(), seeds, "teacher")
        path = os.path.join(self.workdir, "generated.npz")
        if not distributed.is_main():
            return
        data_lib.save_npz(path, np.clip(x, -1, 1), np.asarray(seeds) % max(self.num_classes, 1), seeds=seeds)
        self.log(f"wrote {len(x)} generated images to {path}; train on them with data.name='npz:{path}'")
