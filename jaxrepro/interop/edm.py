"""EDM network pickles (NVlabs/edm `network-snapshot-*.pkl`) → jaxrepro DDPM++ parameters and preconditioning.

    model_config, params, kind, info = import_edm("network-snapshot-200000.pkl")
    model = get_model(model_config.pop("name"), **model_config)
    denoise = make_denoiser(ModelApply(model), params, kind)          # D(x, σ, labels) in NHWC

Supported: EDMPrecond / VPPrecond / VEPrecond / iDDPMPrecond around a SongUNet in its DDPM++ setting
(positional embedding, standard encoder and decoder, resample filter [1, 1]), with the preconditioning
constants jaxrepro's Precond implements (EDM's defaults). Everything else is refused by name. The file
is read by `pickle_reader` (no code in it runs); every parameter of the network is checked to land in
exactly one leaf of the Flax tree with the right shape, and none is left over.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro.interop.pickle_reader import ObjectRecord, iter_records, named_tensors, read_pickle
from jaxrepro.kernels import iddpm_u
from jaxrepro.models import get_model, init_params

PRECONDS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve", "iDDPMPrecond": "iddpm"}
# preconditioning constants jaxrepro's Precond implements, at EDM's defaults; other values are refused
PRECOND_FIXED = {
    "EDMPrecond": dict(sigma_min=0.0, sigma_max=math.inf, sigma_data=0.5),
    "VPPrecond": dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5),
    "VEPrecond": dict(sigma_min=0.02, sigma_max=100.0),
    "iDDPMPrecond": dict(C_1=0.001, C_2=0.008, M=1000),
}
PRECOND_FREE = ("img_resolution", "img_channels", "label_dim", "use_fp16", "model_type")
# SongUNet settings jaxrepro's DDPMpp implements only at DDPM++'s values (NCSN++ differs in all of them)
SONG_FIXED = dict(embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                  decoder_type="standard", resample_filter=[1, 1])
# SongUNet settings that become DDPMpp fields; EDM's SongUNet defaults when a file omits them
SONG_FIELDS = dict(model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4, num_blocks=4,
                   attn_resolutions=[16], dropout=0.10, label_dropout=0, augment_dim=0)
SONG_SHAPE = ("img_resolution", "in_channels", "out_channels", "label_dim")
_SUPPORTED = ", ".join(f"{k}={v!r}" for k, v in SONG_FIXED.items())


def _same(a, b):
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(b, str) or isinstance(a, str):
        return a == b
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6) or float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _snapshot_network(data, path):
    """The network record of a snapshot dict (its 'ema'), or a bare pickled network."""
    if isinstance(data, dict):
        if "ema" not in data:
            raise ValueError(f"{path} holds a dict with keys {sorted(map(str, data))[:10]}, not an EDM network "
                             f"snapshot (network-snapshot-*.pkl, whose key 'ema' holds the network)")
        data = data["ema"]
    if not isinstance(data, ObjectRecord):
        raise ValueError(f"{path}: the network is a {type(data).__name__}, not a pickled EDM module")
    if data.class_name not in PRECONDS:
        raise ValueError(f"{path}: unknown EDM network class {data.class_name!r}; supported: {', '.join(PRECONDS)} "
                         f"(NVlabs/edm's preconditionings around SongUNet)")
    return data


def _kwargs(record, what):
    if record.init_args or not isinstance(record.init_kwargs, dict):
        raise ValueError(f"{what} {record.class_name} has no constructor keyword arguments in the file "
                         f"(args {record.init_args!r}, kwargs {record.init_kwargs!r})")
    return dict(record.init_kwargs)


def read_settings(net):
    """(precond kind, DDPMpp overrides, network kwargs, precond kwargs); refuses what jaxrepro lacks."""
    cls = net.class_name
    pk = _kwargs(net, "preconditioning")
    for key, want in PRECOND_FIXED[cls].items():
        if key in pk and not _same(pk[key], want):
            raise ValueError(f"{cls} setting {key}={pk[key]!r} is not supported: jaxrepro's Precond implements "
                             f"{', '.join(f'{k}={v!r}' for k, v in PRECOND_FIXED[cls].items())} (EDM's defaults)")
    inner = net.modules.get("model")
    if not isinstance(inner, ObjectRecord):
        raise ValueError(f"{cls} has no network under 'model' (found {type(inner).__name__})")
    if inner.class_name != "SongUNet":
        raise ValueError(f"network {inner.class_name!r} (model_type) is not supported; supported: SongUNet in its "
                         f"DDPM++ setting ({_SUPPORTED})")
    nk = _kwargs(inner, "network")
    unknown = sorted(set(nk) - set(SONG_FIXED) - set(SONG_FIELDS) - set(SONG_SHAPE))
    unknown += sorted(set(pk) - set(nk) - set(PRECOND_FIXED[cls]) - set(PRECOND_FREE))
    if unknown:
        raise ValueError(f"unknown {cls}/SongUNet settings {unknown} (a newer EDM?); known: "
                         f"{sorted(set(SONG_FIXED) | set(SONG_FIELDS) | set(PRECOND_FIXED[cls]) | set(PRECOND_FREE))}")
    for key, want in SONG_FIXED.items():
        if key in nk and not _same(nk[key], want):
            raise ValueError(f"SongUNet setting {key}={nk[key]!r} (NCSN++?) is not supported: jaxrepro's DDPMpp "
                             f"implements DDPM++ only ({_SUPPORTED})")
    for key in SONG_SHAPE:
        if key not in nk:
            raise ValueError(f"SongUNet constructor arguments lack {key!r}")
    c = nk["in_channels"]
    out = c * 2 if cls == "iDDPMPrecond" else c
    if nk["out_channels"] != out:
        raise ValueError(f"{cls} around SongUNet with out_channels={nk['out_channels']}; expected {out}")
    f = {k: nk.get(k, v) for k, v in SONG_FIELDS.items()}
    overrides = dict(model_channels=int(f["model_channels"]), channel_mult=tuple(int(m) for m in f["channel_mult"]),
                     channel_mult_emb=int(f["channel_mult_emb"]), num_blocks=int(f["num_blocks"]),
                     attn_resolutions=tuple(int(r) for r in f["attn_resolutions"]), dropout=float(f["dropout"]),
                     label_dropout=float(f["label_dropout"]), augment_dim=int(f["augment_dim"]),
                     num_classes=int(nk["label_dim"]), out_channels=0 if out == c else int(out))
    return PRECONDS[cls], overrides, nk, pk


def check_layers(inner, overrides):
    """Layer attributes SongUNet's source sets (group counts, eps, heads, embedding) against what DDPMpp computes."""
    bad = []
    for name, rec in iter_records(inner, "model."):
        s = rec.state
        if rec.class_name == "GroupNorm":
            c = len(rec.parameters.get("weight", ()))
            want, got = (min(32, c // 4), 1e-6), (s.get("num_groups"), s.get("eps"))
        elif rec.class_name == "UNetBlock":
            heads = 1 if isinstance(rec.modules.get("qkv"), ObjectRecord) else 0
            want = (heads, False, math.sqrt(0.5))
            got = (s.get("num_heads"), s.get("adaptive_scale"), s.get("skip_scale"))
        elif rec.class_name == "PositionalEmbedding":
            want = (overrides["model_channels"], 10000, True)
            got = (s.get("num_channels"), s.get("max_positions"), s.get("endpoint"))
        elif rec.class_name == "Conv2d":
            want, got = (False,), (s.get("fused_resample"),)
        else:
            continue
        if not _same(list(got), list(want)):
            bad.append(f"{name} ({rec.class_name}): {got} != {want}")
    if bad:
        raise ValueError(f"{len(bad)} layers differ from DDPM++ as jaxrepro implements it; first: {'; '.join(bad[:3])}")


def _edm_name(keys, res):
    """Flax path (without 'params') → EDM parameter name."""
    top, *mid, leaf = keys
    if top in ("dec_aux_norm", "dec_aux_conv"):
        top = f"dec.{res}x{res}_{top[4:]}"
    elif top.startswith(("enc_", "dec_")):
        part, r, rest = top.split("_", 2)
        top = f"{part}.{r}x{r}_{rest}"
    return ".".join(["model", top, *mid, {"scale": "weight", "kernel": "weight"}.get(leaf, leaf)])


def _to_flax(w):
    """torch layout → Flax: Conv2d OIHW → HWIO, Linear [out, in] → [in, out]; vectors unchanged."""
    return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T if w.ndim == 2 else w


def map_parameters(net, model, image_shape, kind):
    """The Flax variable dict init_params(model, image_shape, 0, conditional) has, filled from the EDM record."""
    tensors = named_tensors(net)
    used, bad = set(), []
    for name, value in tensors.items():          # fixed buffers: verified, then counted as used
        if name.endswith(".resample_filter"):
            used.add(name)
            if value.shape != (1, 1, 2, 2) or not np.allclose(value, 0.25):
                bad.append(f"{name}: resample filter {value.reshape(-1).tolist()} is not [1, 1]")
        elif name == "u" and kind == "iddpm":
            used.add(name)
            u = iddpm_u(1000, 0.001, 0.008)
            if value.shape != u.shape or not np.allclose(value, u, rtol=1e-3):   # EDM builds u in float32
                bad.append(f"u: iDDPM σ grid differs from jaxrepro's (M=1000, C1=0.001, C2=0.008)")
    conditional = bool(getattr(model, "num_classes", 0))
    abstract = jax.eval_shape(lambda: init_params(model, image_shape, 0, conditional))
    res = image_shape[0]

    def fill(path, leaf):
        keys = [k.key for k in path]
        name = _edm_name(keys[1:], res)
        if keys[0] != "params" or name not in tensors:
            bad.append(f"{jax.tree_util.keystr(path)}: no tensor {name} in the file")
            return jnp.zeros(leaf.shape, leaf.dtype)
        used.add(name)
        w = _to_flax(np.asarray(tensors[name]))
        if w.shape != leaf.shape or not np.issubdtype(w.dtype, np.floating):
            bad.append(f"{name}: file {w.dtype}{list(w.shape)} (as Flax) vs model {leaf.dtype}{list(leaf.shape)}")
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(w, leaf.dtype)

    params = jax.tree_util.tree_map_with_path(fill, abstract)
    bad += [f"{name}: tensor {list(tensors[name].shape)} in the file has no place in the model"
            for name in tensors if name not in used]
    if bad:
        raise ValueError(f"the EDM network does not map onto DDPMpp{dict(image_shape=image_shape)}: {len(bad)} "
                         f"mismatches; first: {'; '.join(bad[:5])}")
    return params


def _describe(record):
    if not isinstance(record, ObjectRecord):
        return None
    return dict(class_name=record.class_name, kwargs=record.init_kwargs)


def import_edm(path):
    """(model_config, params, precond_kind, info) of an EDM network pickle; nothing in the file runs."""
    data = read_pickle(path)
    net = _snapshot_network(data, path)
    kind, overrides, nk, pk = read_settings(net)
    check_layers(net.modules["model"], overrides)
    image_shape = (int(nk["img_resolution"]), int(nk["img_resolution"]), int(nk["in_channels"]))
    model_config = dict(name="ddpmpp_c64", **overrides)
    cfg = dict(model_config)
    model = get_model(cfg.pop("name"), **cfg)
    params = map_parameters(net, model, image_shape, kind)
    extra = data if isinstance(data, dict) else {}
    info = dict(precond_class=net.class_name, network_class=net.modules["model"].class_name,
                image_shape=image_shape, label_dim=int(nk["label_dim"]), use_fp16=bool(pk.get("use_fp16", False)),
                num_params=int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params))),
                precond_kwargs={k: v for k, v in pk.items() if k not in nk}, network_kwargs=nk,
                dataset_kwargs=extra.get("dataset_kwargs"), loss_fn=_describe(extra.get("loss_fn")),
                augment_pipe=_describe(extra.get("augment_pipe")),
                source_sha256=sorted({r.source_sha256 for _, r in iter_records(net) if r.source_sha256}))
    return model_config, params, kind, info
