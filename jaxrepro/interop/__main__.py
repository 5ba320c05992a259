"""Turn a foreign checkpoint into a jaxrepro run directory (config.json + orbax checkpoint).

    python -m jaxrepro.interop network-snapshot-200000.pkl --workdir=runs/edm_vp --data=cifar10 --num_seeds=1000
    python -m jaxrepro.main --workdir=runs/edm_vp --mode=compare

EDM pickles (.pkl) are read by jaxrepro.interop.edm, U-ViT state dicts (.pth / .pt / .npz) by
jaxrepro.interop.uvit; no code in either file runs. The run compares the network with the optimal
denoiser of the data set named by --data (same image shape as the network), like a run trained here.
"""
import argparse
import hashlib
import json
import os
import sys

import jax
import numpy as np

from jaxrepro import data as data_lib
from jaxrepro.checkpoint import Checkpointer
from jaxrepro.losses import LOSS_KINDS
from jaxrepro.models import get_model, init_params
from jaxrepro.train import TrainConfig, init_state, make_optimizer

FORMATS = {".pkl": "EDM network pickle", ".pth": "U-ViT state dict", ".pt": "U-ViT state dict",
           ".npz": "U-ViT arrays"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jaxrepro.interop", description=__doc__.split("\n")[0])
    p.add_argument("file", help="EDM network-snapshot-*.pkl, or a U-ViT .pth / .pt / .npz")
    p.add_argument("--workdir", required=True, help="new run directory (one that holds a run is refused)")
    p.add_argument("--data", default="cifar10", help=f"oracle's data set: {', '.join(data_lib.DATASETS)}")
    p.add_argument("--data_dir", default="", help="where cifar10/cifar100 are prepared (tfds)")
    p.add_argument("--n", type=int, default=None, help="training-set size N for the oracle (default: all)")
    p.add_argument("--subset_seed", type=int, default=0)
    p.add_argument("--num_seeds", type=int, default=256, help="seeds that sample/compare use")
    p.add_argument("--first_seed", type=int, default=0)
    p.add_argument("--step", type=int, default=0, help="step number the checkpoint is saved as")
    p.add_argument("--num_heads", type=int, default=None, help="U-ViT only: attention heads")
    p.add_argument("--image_size", type=int, default=None, help="U-ViT only: image side")
    return p.parse_args(argv)


def read_network(path, args):
    """(model_config, params, precond_kind, info) of a foreign checkpoint, dispatched on its extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unknown checkpoint type {ext!r}; allowed: "
                         f"{', '.join(f'{k} ({v})' for k, v in FORMATS.items())}")
    if ext == ".pkl":
        from jaxrepro.interop.edm import import_edm
        return import_edm(path)
    from jaxrepro.interop.uvit import import_uvit
    model_config, params, kind = import_uvit(path, num_heads=args.num_heads, image_size=args.image_size)
    return model_config, params, kind, dict(network_class="UViT")


def existing_run(workdir):
    """What in workdir belongs to a run (empty list: none)."""
    names = ("config.json", "checkpoints", "checkpoints_record.json", "metrics.jsonl")
    return [n for n in names if os.path.exists(os.path.join(workdir, n))]


def base_config():
    """configs/base.py's get_config() (the configs package ships with jaxrepro)."""
    from configs import base
    return base.get_config()


def make_config(args, model_config, kind):
    """A complete jaxrepro config (base defaults) for the imported network and the oracle's data."""
    c = base_config()
    c.model = dict(model_config)
    c.precond = kind
    c.loss.kind = kind if kind in LOSS_KINDS else "edm"     # only used if the run is trained further
    c.data.update(name=args.data, data_dir=args.data_dir, n=args.n, subset_seed=args.subset_seed)
    c.sample.update(num_seeds=args.num_seeds, first_seed=args.first_seed)
    return c


def check_data(config, params):
    """The oracle's data set fits the network: same image shape (the params' shapes), labels < num_classes."""
    images, labels = data_lib.load_dataset(config.data.name, config.data.data_dir or None)
    images, labels = data_lib.subset(images, labels, config.data.n, config.data.subset_seed)
    kw = dict(config.model)
    model = get_model(kw.pop("name"), **kw)
    classes = int(getattr(model, "num_classes", 0))
    shape = images.shape[1:]
    try:
        want = jax.eval_shape(lambda: init_params(model, shape, 0, classes > 0))
    except ValueError as err:
        raise ValueError(f"the network cannot take {config.data.name} images of shape {shape}: {err}") from None
    got = jax.tree_util.tree_map(np.shape, params)
    if jax.tree_util.tree_map(lambda s: s.shape, want) != got:
        raise ValueError(f"data set {config.data.name} has images of shape {shape}, which this network was not "
                         f"built for; name a data set of the network's image shape with --data")
    if classes and labels.max() >= classes:
        raise ValueError(f"data set {config.data.name} has labels up to {labels.max()}; the network knows "
                         f"{classes} classes")
    if config.sample.num_seeds < 1:
        raise ValueError(f"--num_seeds must be >= 1, got {config.sample.num_seeds}")
    return images, labels


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_run(workdir, config, params, step, record):
    """Checkpoint (the train-state structure Job.ema_params restores), then import.json, then config.json."""
    os.makedirs(workdir, exist_ok=True)
    state = init_state(params, make_optimizer(TrainConfig(**config.train, seed=config.seed)))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        ckpt.save(step, state)
    with open(os.path.join(workdir, "import.json"), "w") as f:
        json.dump(record, f, indent=1, default=str)
    path = os.path.join(workdir, "config.json")
    with open(path + ".tmp", "w") as f:
        f.write(config.to_json(indent=1))
    os.replace(path + ".tmp", path)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path, workdir = os.path.expanduser(args.file), os.path.abspath(os.path.expanduser(args.workdir))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    held = existing_run(workdir)
    if held:
        raise ValueError(f"{workdir} already holds a run ({', '.join(held)}); nothing was changed — "
                         f"choose a new --workdir")
    model_config, params, kind, info = read_network(path, args)
    n_params = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params))
    net = f"{info.get('precond_class', '')}({info['network_class']})".replace("()", "")
    print(f"read {path}: {net}, {n_params:,} parameters, precond {kind}, model {model_config}")
    for key in ("image_shape", "label_dim", "use_fp16", "dataset_kwargs", "loss_fn", "augment_pipe"):
        if info.get(key) is not None:
            print(f"  {key}: {info[key]}")
    if info.get("use_fp16"):
        print("  note: the network ran in float16 on GPUs in EDM; here it runs in float32")
    config = make_config(args, model_config, kind)
    images, _ = check_data(config, params)
    print(f"oracle data: {args.data} N={len(images)} {images.shape[1:]}; {args.num_seeds} seeds from {args.first_seed}")
    record = dict(source=os.path.abspath(path), sha256=_sha256(path), precond=kind, model=model_config,
                  num_params=n_params, info=info)
    write_run(workdir, config, params, args.step, record)
    print(f"wrote {workdir}: config.json, checkpoints/ (step {args.step}), import.json")
    print(f"next: {sys.executable} -m jaxrepro.main --workdir={workdir} --mode=compare   (or --mode=sample|generate)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        raise SystemExit(f"error: {type(err).__name__}: {err}") from None
