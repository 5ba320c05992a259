"""Training: train state with EMA, a jitted data-parallel step, the loop with checkpoints and records.

Determinism: example j of the data stream (global position p = step·B + j) draws its σ, noise,
dropout mask and augmentation from (seed, step, p) alone, and the batch at each step is a pure
function of (seed, step) — so results do not depend on how the batch is split over devices or
micro-batches (up to the order of the gradient sum), and a resumed run continues bit-identically.
The network runs batched (one call per micro-batch); dropout masks are per-example by
`models.layers.dropout`'s example_ids.
"""
import contextlib
import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrepro import augment as augment_lib
from jaxrepro import distributed
from jaxrepro.checkpoint import Checkpointer, set_aside
from jaxrepro.data_stream import batch_positions, call_length, global_batches  # noqa: F401 (re-exported)
from jaxrepro.losses import LossConfig, batch_loss
from jaxrepro.precond import Precond, apply_denoiser
from jaxrepro.trainable import check_trainable, param_paths, trainable_mask  # noqa: F401 (param_paths re-exported)
from jaxrepro.workdir import WorkdirLock, trim_records


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping settings (EDM's recipe as defaults where it applies)."""
    batch_size: int = 128
    micro_batch: int = 0              # rows per gradient-accumulation pass inside the step (lax.scan); 0 = whole batch
    steps_per_execution: int = 1      # optimiser steps per jitted call (Keras' name); > 1 amortises per-call costs
    num_steps: int = 1000
    lr: float = 1e-3
    warmup_images: int = 10_000_000   # linear lr warm-up length, in images
    ema_halflife_images: int = 500_000
    ema_rampup: float = 0.05          # half-life = min(h, ema_rampup · images seen); 0 disables
    grad_clip: float = 0.0            # global-norm clipping; 0 disables
    augment_p: float = 0.0            # EDM's non-leaky augmentation probability; needs augment_dim=9
    compute_dtype: str = "float32"    # network forward/backward in float32 or bfloat16 (params, Adam, EMA, loss: float32)
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 1000
    keep_ckpts: int = 3
    sample_every: int = 0             # sample grid from fixed seeds every k steps; 0 disables
    num_sample_seeds: int = 16
    trainable: str = ""               # regex over '/'-joined parameter paths; only matches train ("" = all)
    init_from: str = ""               # workdir of another run whose parameters initialise step 0 ("" = fresh init)
    init_params: str = "ema"          # which of init_from's parameters: "ema" or "raw"

    def __post_init__(self):
        for name in ("batch_size", "num_steps", "log_every", "ckpt_every", "keep_ckpts", "steps_per_execution"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.micro_batch < 0 or (self.micro_batch and self.batch_size % self.micro_batch):
            raise ValueError(f"train.micro_batch must be 0 (off) or divide batch_size={self.batch_size}, "
                             f"got {self.micro_batch}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"train.lr must be a finite number > 0, got {self.lr}")
        for name in ("warmup_images", "ema_halflife_images", "ema_rampup", "grad_clip", "sample_every"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"train.{name} must be a finite number >= 0, got {value}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"train.compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}")
        if not 0 <= self.augment_p <= 1:
            raise ValueError(f"train.augment_p must be in [0, 1], got {self.augment_p}")
        try:
            re.compile(self.trainable)
        except re.error as err:
            raise ValueError(f"train.trainable must be a regular expression, got {self.trainable!r}: {err}") from err
        if self.init_params not in ("ema", "raw"):
            raise ValueError(f"train.init_params must be 'ema' or 'raw', got {self.init_params!r}")


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray             # int32 scalar: optimiser steps taken
    params: Any
    ema_params: Any
    opt_state: Any
    bad_step: jnp.ndarray         # first step with a non-finite loss/gradient, −1 if none
    bad_what: jnp.ndarray         # 1: loss, 2: gradient


def make_optimizer(cfg: TrainConfig):
    """Adam with a linear warm-up measured in images, optional global-norm clipping; with cfg.trainable
    only the matching parameters get updates (the others get exact zeros and hold no Adam state)."""
    warm_steps = max(cfg.warmup_images / cfg.batch_size, 1e-8)
    schedule = lambda step: cfg.lr * jnp.minimum((step + 1) / warm_steps, 1.0)   # noqa: E731
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    opt = optax.chain(*parts, optax.adam(schedule))
    if not cfg.trainable:
        return opt
    labels = lambda params: jax.tree_util.tree_map(   # noqa: E731
        lambda m: "train" if m else "freeze", trainable_mask(params, cfg.trainable))
    return optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, labels)


def ema_beta(step, cfg: TrainConfig):
    """EMA decay per step from the half-life in images, with EDM's ramp-up."""
    seen = (step + 1) * cfg.batch_size
    halflife = cfg.ema_halflife_images
    if cfg.ema_rampup > 0:
        halflife = jnp.minimum(halflife, seen * cfg.ema_rampup)
    return 0.5 ** (cfg.batch_size / jnp.maximum(halflife, 1e-8))


def init_state(params, optimizer):
    """Step 0: EMA = parameters (own copies, since the step donates its state)."""
    copy = lambda t: jax.tree_util.tree_map(jnp.array, t)   # noqa: E731
    return TrainState(jnp.int32(0), copy(params), copy(params), optimizer.init(params), jnp.int32(-1), jnp.int32(0))


def make_train_step(apply_fn, precond: Precond, loss_cfg: LossConfig, cfg: TrainConfig, optimizer,
                    conditional=False, steps=1):
    """step(state, images [B, ...], labels [B], positions [B]) → (state, metrics); jitted, donates state.

    steps = k > 1: one call takes k optimiser steps — images [k, B, ...], labels and positions [k, B],
    metrics [k] — each exactly as k calls of the one-step function would take it.
    """
    base_key = jax.random.PRNGKey(cfg.seed)

    def net(params, xin, *args, **kwargs):          # the network in compute_dtype; params stay float32
        if cfg.compute_dtype == "bfloat16":
            params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
            xin = xin.astype(jnp.bfloat16)
        return apply_fn(params, xin, *args, **kwargs)

    def loss_fn(params, key, images, labels, positions):
        """Σ_j loss_j over these rows (not yet divided by B); example j's randomness from (key, positions[j])."""
        k_examples, k_dropout = jax.random.split(key)
        keys = jax.vmap(lambda p: jax.random.split(jax.random.fold_in(k_examples, p), 2))(positions)   # [b, 2]
        y, aug = images, None
        if cfg.augment_p > 0:
            y, aug = jax.vmap(augment_lib.augment, in_axes=(0, 0, None))(keys[:, 1], images, cfg.augment_p)

        def denoise(x, sigma):
            return apply_denoiser(net, precond, params, x, sigma, labels if conditional else None, True,
                                  {"dropout": k_dropout}, aug, example_ids=positions)
        return jnp.sum(batch_loss(denoise, y, keys[:, 0], loss_cfg))

    def loss_and_grads(params, key, images, labels, positions):
        """Mean loss over the batch and its gradient, accumulated over micro-batches of cfg.micro_batch rows."""
        b = images.shape[0]
        m = cfg.micro_batch or b
        grad_fn = jax.value_and_grad(loss_fn)
        if m == b:
            total, grads = grad_fn(params, key, images, labels, positions)
        else:   # micro-batch i = rows {j·k + i}: each keeps the batch's spread over devices (rows stay local)
            micro = lambda a: jnp.swapaxes(a.reshape(m, b // m, *a.shape[1:]), 0, 1)   # noqa: E731  [k, m, ...]

            def body(acc, rows):
                value, g = grad_fn(params, key, *rows)
                return jax.tree_util.tree_map(jnp.add, acc, (value, g)), None
            shapes = jax.eval_shape(grad_fn, params, key, *(a[:m] for a in (images, labels, positions)))
            zero = jax.tree_util.tree_map(lambda t: jnp.zeros(t.shape, t.dtype), shapes)
            (total, grads), _ = jax.lax.scan(body, zero, (micro(images), micro(labels), micro(positions)),
                                             unroll=_scan_unroll(b // m))
        return total / b, jax.tree_util.tree_map(lambda g: g / b, grads)

    def step(state, images, labels, positions):
        key = jax.random.fold_in(base_key, state.step)
        loss, grads = loss_and_grads(state.params, key, images, labels, positions)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.bad_step < 0)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        beta = ema_beta(state.step, cfg)
        ema = jax.tree_util.tree_map(lambda e, p: beta * e + (1 - beta) * p, state.ema_params, params)
        if cfg.trainable:   # frozen leaves stay bit-identical (p + 0 and the EMA blend could round them)
            mask = trainable_mask(state.params, cfg.trainable)
            pick = lambda new, old: jax.tree_util.tree_map(lambda m, a, b: a if m else b, mask, new, old)  # noqa: E731
            params, ema = pick(params, state.params), pick(ema, state.ema_params)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        first_bad = (state.bad_step < 0) & ~ok
        new = TrainState(
            step=jnp.where(ok, state.step + 1, state.step),
            params=keep(params, state.params), ema_params=keep(ema, state.ema_params),
            opt_state=keep(opt_state, state.opt_state),
            bad_step=jnp.where(first_bad, state.step, state.bad_step),
            bad_what=jnp.where(first_bad, jnp.where(jnp.isfinite(loss), 2, 1), state.bad_what))
        return new, {"loss": loss, "grad_norm": grad_norm}

    if steps == 1:
        return jax.jit(step, donate_argnums=0)

    def multi_step(state, images, labels, positions):
        # the k steps share one allocation of XLA's buffer of intermediates, which XLA:CPU maps afresh per
        # call (and the kernel zeroes page by page: ≈ 400,000 page faults per DDPM++ C = 32 step of batch 64)
        return jax.lax.scan(lambda s, rows: step(s, *rows), state, (images, labels, positions),
                            unroll=_scan_unroll(steps))
    return jax.jit(multi_step, donate_argnums=0)


def _scan_unroll(length):
    """lax.scan's unroll for a loop around the network: XLA:CPU compiles a rolled loop around convolutions
    pathologically (a 2-iteration DDPM++ scan took > 9 min), so there it is unrolled; elsewhere rolled."""
    return length if jax.default_backend() == "cpu" else 1


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


def train(workdir, images, labels, apply_fn, params, precond: Precond, loss_cfg: LossConfig,
          cfg: TrainConfig, conditional=False, sample_fn=None, log=print, devices=None, fresh_start=False,
          _kill_during_save: Optional[int] = None):
    """Run (or resume) training in `workdir`; returns the final TrainState.

    images [N, ...] in [−1, 1], labels [N] ints; checkpoints under workdir/checkpoints; metrics as
    JSON lines in workdir/metrics.jsonl; sample_fn(ema_params, step) is called every sample_every steps.
    One writer per workdir (a lock); a workdir whose run cannot be resumed is refused unless fresh_start.
    """
    mesh = distributed.data_mesh(devices)                            # every device of every process
    if cfg.batch_size % mesh.size or (cfg.micro_batch or cfg.batch_size) % mesh.size:
        raise ValueError(f"batch_size {cfg.batch_size} and micro_batch {cfg.micro_batch} must be divisible by the "
                         f"{mesh.size} devices")
    repl = NamedSharding(mesh, P())
    check_trainable(params, cfg.trainable)
    optimizer = make_optimizer(cfg)
    k_max = cfg.steps_per_execution
    uneven = [f"{name}={e}" for name, e in (("log_every", cfg.log_every), ("ckpt_every", cfg.ckpt_every),
                                            ("sample_every", cfg.sample_every)) if e % k_max]
    if uneven:
        log(f"note: steps_per_execution={k_max} does not divide {', '.join(uneven)}: the steps before each of "
            f"those run one per call (a second program to compile); which steps share a call moves results by "
            f"float rounding only")
    step_fns = {k: make_train_step(apply_fn, precond, loss_cfg, cfg, optimizer, conditional, steps=k)
                for k in sorted({1, k_max})}      # jitted lazily: the one-step form compiles only if used
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    main = distributed.is_main()                                     # process 0 alone writes records
    with WorkdirLock(workdir) if main else contextlib.nullcontext(), \
            Checkpointer(os.path.join(workdir, "checkpoints"), cfg.keep_ckpts) as ckpt:
        state = _resume(ckpt, jax.device_put(init_state(params, optimizer), repl), metrics_path, fresh_start, log)
        start = int(state.step)
        if start >= cfg.num_steps:
            log(f"the newest checkpoint (step {start}) is already at or past num_steps={cfg.num_steps}; "
                f"nothing to train (raise train.num_steps to continue)")
        t0, last_log, pending, step = time.time(), start, [], start
        while step < cfg.num_steps:
            k = call_length(step, k_max, cfg.num_steps, (cfg.log_every, cfg.ckpt_every, cfg.sample_every))
            state, m = step_fns[k](state, *global_batches(mesh, step, k, cfg.batch_size, cfg.seed, images, labels))
            pending.append(m)
            step = done = step + k                                   # no log/checkpoint/sample step inside
            if done % cfg.log_every == 0 or done == cfg.num_steps:
                _check_finite(state)
                losses = np.concatenate([np.ravel(x["loss"]).astype(np.float64) for x in pending])
                elapsed = time.time() - t0
                rate = (done - last_log) / max(elapsed, 1e-9)
                rec = {"step": done, "loss": float(np.mean(losses)),
                       "grad_norm": float(np.ravel(pending[-1]["grad_norm"])[-1]),
                       "steps_per_s": rate, "images_per_s": rate * cfg.batch_size}
                if main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                eta = (cfg.num_steps - done) / max(rate, 1e-9)
                log(f"step {done}/{cfg.num_steps}  loss {rec['loss']:.4f}  {rate:.1f} steps/s  "
                    f"{rec['images_per_s']:.0f} img/s  ETA {eta:.0f}s")
                t0, last_log, pending = time.time(), done, []
            if done % cfg.ckpt_every == 0 or done == cfg.num_steps:
                _check_finite(state)
                ckpt.save(done, state, wait=_kill_during_save != done)
                if _kill_during_save == done:   # test hook: die while the async save is in flight
                    os.kill(os.getpid(), 9)
            if sample_fn is not None and cfg.sample_every and done % cfg.sample_every == 0:
                sample_fn(state.ema_params, done)
        ckpt.wait()
    return state


def _resume(ckpt, state, metrics_path, fresh_start, log):
    """The newest good checkpoint's state (records past it dropped), or `state` for a new run."""
    restored, at = ckpt.restore_latest(state, allow_fresh=fresh_start)
    if restored is not None:
        dropped = trim_records(metrics_path, at) if distributed.is_main() else 0
        log(f"resumed from checkpoint at step {at}" + (f" ({dropped} records past it dropped)" if dropped else ""))
        return restored
    for path in (metrics_path, ckpt.record_path):     # a fresh start keeps the earlier run's records, renamed
        if distributed.is_main() and os.path.exists(path):
            log(f"fresh start: kept the earlier {os.path.basename(path)} as {set_aside(path)}")
    return state


def _check_finite(state):
    bad = int(state.bad_step)
    if bad >= 0:
        what = {1: "loss", 2: "gradient"}[int(state.bad_what)]
        raise NonFiniteError(f"non-finite {what} at step {bad}; training stopped, the last good "
                             f"checkpoint is kept and parameters stay at step {int(state.step)}")
