"""jaxrepro's DDPM++ training step and forward pass against EDM's own PyTorch code, side by side.

Run: `python benchmarks/train_vs_torch.py --edm_dir=PATH/TO/NVlabs-edm [--batch 64 --channels 32]`.
EDM's code is not part of jaxrepro (its licence forbids copying it): give a checkout of NVlabs/edm.
Both sides: DDPM++ (SongUNet, positional embedding, [1,1] resampling, channel_mult 2,2,2, 4 blocks,
attention at 16, dropout 0.13, augment_dim 9), EDM loss and preconditioning, Adam, 32×32×3, batch B.
Contenders are timed in turns (torch, jax variants, torch, …) for --repeats rounds of --steps steps
each (after one untimed settling step: the first step after the other framework ran is up to 1.6×
slower, so without it the ratio measures the switch, not training); a contender's time is the median
over its rounds of the per-round median step, and its ratio to torch is the median of the per-round
ratios (so a noisy stretch of the machine hits both). A jaxrepro contender with steps_per_execution = k
(`_steps{k}`: k optimiser steps per jitted call, train.steps_per_execution) is timed per call and
reported per step.
"""
import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro.losses import LossConfig
from jaxrepro.models import ModelApply, get_model, init_params
from jaxrepro.precond import Precond, make_denoiser
from jaxrepro.train import TrainConfig, init_state, make_optimizer, make_train_step


def torch_contenders(edm_dir, channels, batch, lr):
    """(train step, forward) closures of EDM's EDMPrecond + EDMLoss + Adam, CPU float32."""
    import torch
    sys.path.insert(0, os.path.abspath(os.path.expanduser(edm_dir)))
    from training.loss import EDMLoss
    from training.networks import EDMPrecond
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=32, img_channels=3, model_type="SongUNet", embedding_type="positional",
                     encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                     resample_filter=[1, 1], model_channels=channels, channel_mult=[2, 2, 2], dropout=0.13,
                     augment_dim=9).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    loss_fn = EDMLoss()
    images = torch.rand(batch, 3, 32, 32) * 2 - 1

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net, images).sum() / batch       # EDM's training_loop: sum, scaled by 1/batch
        loss.backward()
        opt.step()
        return float(loss)

    def forward():
        with torch.no_grad():
            net.eval()
            out = net(images, torch.full((batch,), 1.0))
            net.train()
        return float(out[0, 0, 0, 0])
    return step, forward, sum(p.numel() for p in net.parameters())


def jax_contenders(channels, batch, lr, micro_batch, steps=1):
    """(train call, forward) closures of jaxrepro's DDPM++ with the same settings; a call takes `steps` steps."""
    model = get_model("ddpmpp_c32", model_channels=channels)
    params = init_params(model, (32, 32, 3), 0)
    kw = dict(micro_batch=micro_batch) if micro_batch else {}
    cfg = TrainConfig(batch_size=batch, lr=lr, warmup_images=1, steps_per_execution=steps, **kw)
    opt = make_optimizer(cfg)
    box = [init_state(params, opt)]
    step_fn = make_train_step(ModelApply(model), Precond("edm"), LossConfig("edm"), cfg, opt, steps=steps)
    images = np.random.default_rng(0).uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
    labels, pos = np.zeros(batch, np.int32), np.arange(batch, dtype=np.int32)
    batches = (images, labels, pos)
    if steps > 1:                                   # [k, B, ...]: the k steps' batches (positions differ)
        batches = (np.stack([images] * steps), np.stack([labels] * steps),
                   np.arange(steps * batch, dtype=np.int32).reshape(steps, batch))
    denoise = make_denoiser(ModelApply(model), params, "edm")
    fwd = jax.jit(lambda x: denoise(x, jnp.ones((batch,))))

    def step():
        box[0], m = step_fn(box[0], *batches)
        return float(np.ravel(m["loss"])[-1])

    def forward():
        return float(fwd(images)[0, 0, 0, 0])
    return step, forward, sum(np.size(p) for p in jax.tree_util.tree_leaves(params))


def timed(fn, steps):
    """Median wall seconds of `steps` calls (each blocks on its result), after one untimed settling call."""
    fn()                # the first call after the other framework ran is slower for both (caches, pages)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edm_dir", default=os.environ.get("EDM_DIR", ""), help="a checkout of NVlabs/edm")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--micro_batches", default="0", help="jaxrepro micro_batch values to time (0 = off)")
    parser.add_argument("--steps_per_execution", default="1,2",
                        help="jaxrepro steps_per_execution values to time (its time per step is reported)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not args.edm_dir or not os.path.isfile(os.path.join(os.path.expanduser(args.edm_dir), "training", "networks.py")):
        parser.error(f"--edm_dir={args.edm_dir!r} is not a checkout of NVlabs/edm (no training/networks.py)")
    import torch
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "torch_threads": torch.get_num_threads(), "jax": jax.__version__, "torch": torch.__version__,
                      "xla_flags": os.environ.get("XLA_FLAGS", "")}), flush=True)
    lr = 1e-4
    t_step, t_fwd, t_count = torch_contenders(args.edm_dir, args.channels, args.batch, lr)
    contenders = {"torch": (t_step, t_fwd, 1)}
    for m in [int(v) for v in args.micro_batches.split(",")]:
        for k in [int(v) for v in args.steps_per_execution.split(",")]:
            j_step, j_fwd, j_count = jax_contenders(args.channels, args.batch, lr, m, k)
            if j_count != t_count:
                raise SystemExit(f"parameter counts differ: jaxrepro {j_count}, EDM {t_count}")
            contenders[f"jax_micro{m}" + (f"_steps{k}" if k > 1 else "")] = (j_step, j_fwd, k)
    for step, fwd, _ in contenders.values():        # compile / warm up
        step(), step(), fwd(), fwd()
    rounds = {name: {"step": [], "forward": []} for name in contenders}
    for r in range(args.repeats):
        for name, (step, fwd, k) in contenders.items():
            rounds[name]["step"].append(timed(step, -(-args.steps // k)) / k)     # seconds per optimiser step
            rounds[name]["forward"].append(timed(fwd, args.steps))
        print(json.dumps({"round": r, **{n: {k: round(v[-1], 3) for k, v in d.items()} for n, d in rounds.items()}}),
              flush=True)
    for name, d in rounds.items():
        ratio = {k: float(np.median(np.array(d[k]) / np.array(rounds["torch"][k]))) for k in d}
        print(json.dumps({"contender": name, "batch": args.batch, "channels": args.channels, "params": t_count,
                          "step_s": round(float(np.median(d["step"])), 3),
                          "forward_s": round(float(np.median(d["forward"])), 3),
                          "step_ratio_to_torch": round(ratio["step"], 2),
                          "forward_ratio_to_torch": round(ratio["forward"], 2)}), flush=True)


if __name__ == "__main__":
    main()
