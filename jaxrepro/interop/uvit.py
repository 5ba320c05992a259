"""Official U-ViT checkpoints (baofff/U-ViT `libs/uvit.py` state dicts) → jaxrepro UViT parameters.

    config, params, kind = import_uvit("cifar10_uvit_small.pth")
    model = get_model(config.pop("name"), **config)    # make_denoiser(ModelApply(model), params, kind)

The released files are plain `nnet.state_dict()` / `nnet_ema.state_dict()` (torch.save); they are
read with `weights_only=True`, so no code in the file runs. `.npz` files with the same names work too.
"""
import math
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro.models import get_model, init_params

# the official CIFAR-10 U-ViT-S/2 (configs/cifar10_uvit_small.py), constructor kwargs
OFFICIAL_CIFAR10 = dict(img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4,
                        qkv_bias=False, mlp_time_embed=False, num_classes=-1)
# kwargs of the official constructor that this module understands (conv, skip: official defaults True)
KWARGS = tuple(OFFICIAL_CIFAR10) + ("conv", "skip")
_CONV = ("patch_embed", "final_layer")
_NORMS = ("norm", "norm1", "norm2")


def read_state_dict(path):
    """{official name: float32 array} from a torch state dict (.pth/.pt, weights only) or an .npz."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        except ValueError as err:     # object arrays would need pickle
            raise ValueError(f"{path}: npz arrays must be plain numeric arrays (no pickled objects): {err}") from None
    if ext not in (".pth", ".pt"):
        raise ValueError(f"{path}: unknown checkpoint kind {ext!r}; allowed: .pth, .pt (torch state dict), .npz")
    try:
        import torch
    except ImportError as err:
        raise ImportError("reading .pth files needs torch (a CPU wheel is enough), or convert to .npz") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} needs more than tensors to load (refused: only weights_only=True loading is "
                         f"allowed, no code from a checkpoint runs): {str(err).splitlines()[0][:200]}") from None
    except RuntimeError as err:
        raise ValueError(f"{path} is not a torch checkpoint: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict {{name: tensor}} (got {type(obj).__name__}); the official "
                         f"releases are nnet.state_dict() files such as cifar10_uvit_small.pth")
    return {str(k): (v.float() if v.is_floating_point() else v).numpy() for k, v in obj.items()}


def _require(state, name):
    if name not in state:
        raise ValueError(f"not an official U-ViT state dict: key {name!r} is missing")
    return state[name]


def uvit_kwargs_from_state_dict(state, num_heads=None, **given):
    """Official `UViT(...)` kwargs inferred from names and shapes; `given` ones must agree with the weights.

    num_heads cannot be inferred from weights (the qkv matrix is the same for every head count): it
    is taken from the caller, by default that of the official CIFAR-10 config (8). Of an odd official
    depth only depth//2 matters, so depth comes back even.
    """
    unknown = set(given) - set(KWARGS)
    if unknown:
        raise ValueError(f"unknown U-ViT kwargs {sorted(unknown)}; allowed: {', '.join(KWARGS)}")
    d, in_chans, p, _ = _require(state, "patch_embed.proj.weight").shape          # [d, C, p, p]
    n_in = sum(1 for k in state if k.startswith("in_blocks.") and k.endswith(".norm1.weight"))
    hidden = _require(state, "mid_block.mlp.fc1.weight").shape[0]                  # [d·mlp_ratio, d]
    label = state.get("label_emb.weight")                                          # [N, d]
    kw = dict(patch_size=int(p), in_chans=int(in_chans), embed_dim=int(d), depth=2 * n_in,
              mlp_ratio=hidden // d if hidden % d == 0 else hidden / d,
              qkv_bias="mid_block.attn.qkv.bias" in state, mlp_time_embed="time_embed.0.weight" in state,
              num_classes=-1 if label is None else int(label.shape[0]),
              conv="final_layer.weight" in state, skip=n_in == 0 or "out_blocks.0.skip_linear.weight" in state)
    n_patches = _require(state, "pos_embed").shape[1] - (1 if label is None else 2)  # [1, extras + L, d]
    side = math.isqrt(max(n_patches, 0))
    if side * side != n_patches:
        raise ValueError(f"pos_embed has {n_patches} patch positions, not a square number (square images only)")
    kw["img_size"] = side * int(p)
    for key, value in given.items():
        if key in kw and value != kw[key]:
            raise ValueError(f"{key}={value!r} contradicts the weights, which say {key}={kw[key]!r}")
    kw["num_heads"] = int(OFFICIAL_CIFAR10["num_heads"] if num_heads is None else num_heads)
    if kw["num_heads"] <= 0 or d % kw["num_heads"]:
        raise ValueError(f"num_heads={kw['num_heads']} must be > 0 and divide embed_dim {d}")
    return {**kw, **given}


def jaxrepro_model(model_kwargs):
    """(get_model overrides for "uvit_s2", image shape [H, W, C]) of official `UViT(...)` kwargs."""
    kw = {**OFFICIAL_CIFAR10, "conv": True, "skip": True, **model_kwargs}
    unknown = set(kw) - set(KWARGS)
    if unknown:
        raise ValueError(f"unknown U-ViT kwargs {sorted(unknown)}; allowed: {', '.join(KWARGS)}")
    n = int(kw["num_classes"])
    if n == 0 or n == 1:
        raise ValueError(f"num_classes={n}: an official conditional U-ViT has ≥ 2 label rows (classes + null)")
    overrides = dict(patch_size=int(kw["patch_size"]), embed_dim=int(kw["embed_dim"]), depth=int(kw["depth"]),
                     num_heads=int(kw["num_heads"]), mlp_ratio=float(kw["mlp_ratio"]),
                     qkv_bias=bool(kw["qkv_bias"]), mlp_time_embed=bool(kw["mlp_time_embed"]),
                     num_classes=max(n - 1, 0),   # official N label rows = our classes + the null row
                     skip=bool(kw["skip"]), conv=bool(kw["conv"]))
    return overrides, (int(kw["img_size"]), int(kw["img_size"]), int(kw["in_chans"]))


def flax_target(name):
    """(path in our "params" tree, kind ∈ conv|linear|raw) of an official name; None if it has no place."""
    *module, leaf = name.split(".")
    if name == "pos_embed":
        return ("pos_embed",), "raw"
    if leaf not in ("weight", "bias") or not module:
        return None
    path = []
    for part in module:             # "in_blocks.0.attn.qkv" → in_blocks_0/attn/qkv
        if part.isdigit() and path:
            path[-1] += f"_{part}"
        else:
            path.append(part)
    if path == ["patch_embed", "proj"]:
        path = ["patch_embed"]
    if path[-1] in _NORMS:
        return (*path, "scale" if leaf == "weight" else "bias"), "raw"
    if path == ["label_emb"]:
        return (("label_emb", "embedding"), "raw") if leaf == "weight" else None
    kind = "conv" if path[-1] in _CONV else "linear"
    return (*path, "kernel" if leaf == "weight" else "bias"), kind


def _ours(arr, kind, leaf):
    """Official array → our layout: Linear [out, in] → [in, out]; Conv2d OIHW → HWIO."""
    if leaf == "kernel" and kind == "linear" and arr.ndim == 2:
        return arr.T
    if leaf == "kernel" and kind == "conv" and arr.ndim == 4:
        return arr.transpose(2, 3, 1, 0)
    return arr


def convert_state_dict(state, model_kwargs):
    """Flax variables {"params": …} of our UViT from an official state dict; raises listing the first mismatches.

    model_kwargs: the official `UViT(...)` kwargs (e.g. uvit_kwargs_from_state_dict, or a saved config).
    """
    overrides, shape = jaxrepro_model(model_kwargs)
    model = get_model("uvit_s2", **overrides)
    expected = jax.eval_shape(lambda: init_params(model, shape, 0, conditional=overrides["num_classes"] > 0))
    want = {tuple(str(getattr(k, "key", k)) for k in path): tuple(v.shape)
            for path, v in jax.tree_util.tree_flatten_with_path(expected["params"])[0]}
    params, problems, seen = {}, [], set()
    for name, value in state.items():
        target = flax_target(name)
        if target is None:
            problems.append(f"unexpected key {name} {tuple(value.shape)}")
            continue
        path, kind = target
        arr = _ours(np.asarray(value, np.float32), kind, path[-1])
        if path not in want:
            problems.append(f"unexpected key {name}: maps to {'/'.join(path)}, which the model lacks")
            continue
        seen.add(path)
        if want[path] != arr.shape:
            problems.append(f"shape of {name}: file {tuple(value.shape)} → {arr.shape}, model {want[path]}")
            continue
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(arr)
    problems += [f"missing in file: {'/'.join(k)} {v}" for k, v in sorted(want.items()) if k not in seen]
    if problems:
        raise ValueError(f"the state dict does not match U-ViT {model_kwargs} ({len(problems)} problems); first: "
                         + "; ".join(problems[:8]))
    return {"params": params}


def import_uvit(path, num_heads=None, image_size=None):
    """(model config for get_model, Flax variables, precond kind "vp") of an official U-ViT checkpoint.

    The official CIFAR-10 model is a continuous VP SDE (β_min 0.1, β_max 20) predicting noise, called
    at 999·t: jaxrepro's Precond("vp") around this network. num_heads: see uvit_kwargs_from_state_dict.
    """
    state = read_state_dict(path)
    given = {} if image_size is None else {"img_size": int(image_size)}
    kwargs = uvit_kwargs_from_state_dict(state, num_heads=num_heads, **given)
    params = convert_state_dict(state, kwargs)
    overrides, _ = jaxrepro_model(kwargs)
    return dict(name="uvit_s2", **overrides), params, "vp"
