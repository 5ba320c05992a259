"""Score networks with one contract: F(x, c_noise, labels=None, train=False) → x-shaped output.

Presets are `functools.partial`s of the module classes; `get_model(name, **overrides)` builds one.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrepro.models.ddpmpp import DDPMpp
from jaxrepro.models.mlp import MLP
from jaxrepro.models.uvit import UViT

_EDM_CIFAR = dict(channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,), dropout=0.13, augment_dim=9)
PRESETS = {
    "ddpmpp_c64": functools.partial(DDPMpp, model_channels=64, **_EDM_CIFAR),
    "ddpmpp_c128": functools.partial(DDPMpp, model_channels=128, **_EDM_CIFAR),
    "ddpmpp_c256": functools.partial(DDPMpp, model_channels=256, **_EDM_CIFAR),
    "ddpmpp_c32": functools.partial(DDPMpp, model_channels=32, **_EDM_CIFAR),
    "ddpmpp_tiny": functools.partial(DDPMpp, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                                     attn_resolutions=(4,), dropout=0.0),
    # U-ViT-S/2 of the official CIFAR-10 config (depth 12: 6 in-blocks, 1 mid, 6 out; no qkv bias)
    "uvit_s2": functools.partial(UViT, patch_size=2, depth=12, embed_dim=512, num_heads=8, mlp_ratio=4.0),
    "uvit_tiny": functools.partial(UViT, patch_size=2, depth=2, embed_dim=64, num_heads=2, mlp_ratio=2.0),
    "mlp": functools.partial(MLP, width=512, depth=4, emb_dim=128),
    "mlp_tiny": functools.partial(MLP, width=64, depth=2, emb_dim=32),
}


# size fields that must be positive (a 0 would surface later as a ZeroDivisionError inside flax)
POSITIVE_FIELDS = {"width", "depth", "emb_dim", "model_channels", "num_blocks", "channel_mult_emb", "patch_size",
                   "embed_dim", "num_heads", "mlp_ratio"}


def get_model(name, **overrides):
    """Flax module for a preset name, with field overrides (e.g. num_classes=10)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(PRESETS))}")
    cls = PRESETS[name].func
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"{name} has no setting {sorted(unknown)}; allowed: {', '.join(sorted(fields))}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}   # JSON lists → hashable
    module = PRESETS[name](**overrides)
    for field in POSITIVE_FIELDS & fields:
        value = getattr(module, field)
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name}: {field} must be > 0, got {value!r}")
    return module


@dataclasses.dataclass(frozen=True)
class ModelApply:
    """apply_fn(params, x, c_noise, labels, train, rngs=None) for precond.make_denoiser (hashable)."""
    module: nn.Module

    def __call__(self, params, x, c_noise, labels=None, train=False, rngs=None, **kwargs):
        return self.module.apply(params, x, c_noise, labels, train, rngs=rngs or {}, **kwargs)


def init_params(module, image_shape, seed=0, conditional=False):
    """Initial parameters for inputs [1, *image_shape] from an integer seed.

    Uses the "rbg" PRNG, whose XLA programs compile several times faster than threefry's
    for the many initialisers of a UNet (≈4 s instead of ≈11 s for ddpmpp_tiny on CPU).
    """
    key = jax.random.key(int(seed), impl="rbg")
    x = jnp.zeros((1, *image_shape))
    labels = jnp.zeros((1,), jnp.int32) if conditional else None
    return jax.jit(lambda k: module.init({"params": k, "dropout": k}, x, jnp.zeros((1,)), labels, False))(key)


def param_count(module, image_shape, conditional=False):
    """Number of parameters, from abstract shapes (nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_params(module, image_shape, 0, conditional))
    return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))


def forward_flops(module, image_shape, batch=1):
    """XLA's FLOP estimate of one forward pass on [batch, *image_shape]."""
    shapes = jax.eval_shape(lambda: init_params(module, image_shape, 0))
    labels = jnp.zeros((batch,), jnp.int32) if getattr(module, "num_classes", 0) else None
    fn = jax.jit(lambda p, x, c: module.apply(p, x, c, labels, False))
    cost = fn.lower(shapes, jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32),
                    jax.ShapeDtypeStruct((batch,), jnp.float32)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))
