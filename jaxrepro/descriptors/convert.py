"""Convert an official SSCD TorchScript file (Classy Vision names) into a Flax checkpoint.

    python -m jaxrepro.descriptors convert --torchscript sscd_disc_large.torchscript.pt --out DIR

torch (the "sscd" extra) is needed here only; the result (sscd.npz + meta.json) loads without it.
"""
import os
import re

import jax
import numpy as np

from jaxrepro.descriptors.sscd import ARCHS, SSCD, save_variables

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_BLOCK = re.compile(r"backbone\.blocks\.(\d+)\.block(\d+)-(\d+)\.(.+)$")


def flax_target(name):
    """(collection, path tuple, kind) of a released state-dict key; kind ∈ conv|bn|linear|skip; None if unknown."""
    if name.endswith("num_batches_tracked"):
        return "skip"
    module, _, leaf = name.rpartition(".")
    if module == "embeddings.1" and leaf in ("weight", "bias"):
        return ("params", ("proj", "kernel" if leaf == "weight" else "bias"), "linear")
    if module.startswith("backbone.initial_block._module."):
        idx = module.rsplit(".", 1)[1]
        if idx == "0" and leaf == "weight":
            return ("params", ("trunk", "stem_0", "kernel"), "conv")
        if idx == "1" and leaf in _BN:
            col, field = _BN[leaf]
            return (col, ("trunk", "stem_1", field), "bn")
        return None
    m = _BLOCK.match(name)
    if not m or m.group(1) != m.group(2):
        return None
    block, rest = f"block{m.group(1)}_{m.group(3)}", m.group(4)
    sub, _, leaf = rest.rpartition(".")
    layer = {"convolutional_block.0": "cb_0", "convolutional_block.1": "cb_1", "convolutional_block.3": "cb_3",
             "convolutional_block.4": "cb_4", "convolutional_block.6": "cb_6", "bn": "bn",
             "downsample.0": "downsample_0", "downsample.1": "downsample_1"}.get(sub)
    if layer is None:
        return None
    if layer in ("cb_0", "cb_3", "cb_6", "downsample_0") and leaf == "weight":
        return ("params", ("trunk", block, layer, "kernel"), "conv")
    if leaf in _BN and layer in ("cb_1", "cb_4", "bn", "downsample_1"):
        col, field = _BN[leaf]
        return (col, ("trunk", block, layer, field), "bn")
    return None


def detect_arch(state):
    """sscd_disc_large if the third stage has 23 blocks, else sscd_disc_mixup."""
    return "sscd_disc_large" if any(k.startswith("backbone.blocks.2.block2-22.") for k in state) else "sscd_disc_mixup"


def convert_state_dict(state, arch_name=None):
    """(arch name, Flax variables) from {name: numpy array}; raises listing the first mismatches."""
    arch_name = arch_name or detect_arch(state)
    arch = ARCHS[arch_name]
    expected = jax.eval_shape(lambda: SSCD(arch).init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32)))
    want = {(col, *(str(getattr(k, "key", k)) for k in path[1:])): tuple(v.shape)
            for path, v in jax.tree_util.tree_flatten_with_path(expected)[0]
            for col in [str(getattr(path[0], "key", path[0]))]}
    variables, problems = {}, []
    for name, value in state.items():
        target = flax_target(name)
        if target == "skip":
            continue
        if target is None:
            problems.append(f"unexpected key {name} {tuple(value.shape)}")
            continue
        col, path, kind = target
        arr = np.asarray(value, np.float32)
        if kind == "conv":
            arr = arr.transpose(2, 3, 1, 0)          # OIHW → HWIO (grouped: I is per group in both)
        elif kind == "linear" and path[-1] == "kernel":
            arr = arr.T                              # [out, in] → [in, out]
        key = (col, *path)
        if key not in want:
            problems.append(f"key {name} maps to {'/'.join(key)}, which the {arch_name} model lacks")
        elif want[key] != arr.shape:
            problems.append(f"shape of {name}: file {tuple(value.shape)} → {arr.shape}, model {want[key]}")
        node = variables.setdefault(col, {})
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = arr
    seen = {(c, *p) for c, p, _ in (flax_target(n) for n in state if flax_target(n) not in (None, "skip"))}
    problems += [f"missing in file: {'/'.join(k)} {v}" for k, v in sorted(want.items()) if k not in seen]
    if problems:
        raise ValueError(f"the state dict does not match {arch_name} ({len(problems)} problems); first: "
                         + "; ".join(problems[:8]))
    return arch_name, variables


def convert_torchscript(path, out_dir, arch_name=None):
    """Read a TorchScript SSCD file, convert, and write a torch-free checkpoint; returns the arch name."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("conversion needs torch: pip install '.[sscd]' (a CPU wheel is enough)") from err
    path, out_dir = os.path.expanduser(path), os.path.expanduser(out_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no TorchScript file at {path}")
    try:
        model = torch.jit.load(path, map_location="cpu")
    except RuntimeError as err:
        raise ValueError(f"{path} is not a TorchScript file (a state dict or pickled module? SSCD's releases "
                         f"are *.torchscript.pt files, e.g. sscd_disc_large.torchscript.pt): "
                         f"{str(err).splitlines()[0][:200]}") from None
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    arch_name, variables = convert_state_dict(state, arch_name)
    save_variables(out_dir, arch_name, variables)
    return arch_name
