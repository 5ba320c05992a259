"""SSCD copy-detection descriptors (Pizzi et al., CVPR 2022) in Flax, in the released models' layout.

Trunks follow Classy Vision: stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) and four stages of
bottleneck blocks (1×1 → 3×3 (stride, groups) → 1×1, BN after each, residual with a 1×1/stride
projection where shapes change, ReLU). Then GeM pooling (p = 3, clamp 1e-6), a linear projection
with bias, and L2 normalisation. BatchNorm runs in inference mode (eps 1e-5). Padding is explicit
and symmetric, as torch pads. Inputs are already ImageNet-normalised ([B, H, W, 3]).
"""
import dataclasses
import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class Arch:
    """A released SSCD architecture."""
    name: str
    depths: Sequence[int]
    widths: Sequence[int]        # bottleneck width of each stage (groups × per-group width)
    groups: int
    dims: int                    # descriptor size


ARCHS = {
    "sscd_disc_mixup": Arch("sscd_disc_mixup", (3, 4, 6, 3), (64, 128, 256, 512), 1, 512),         # ResNet-50
    "sscd_disc_large": Arch("sscd_disc_large", (3, 4, 23, 3), (128, 256, 512, 1024), 32, 1024),   # ResNeXt101-32x4d
}
OUT_PLANES = (256, 512, 1024, 2048)


def _bn(name):
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, momentum=0.9, name=name)


class Bottleneck(nn.Module):
    """Classy Vision's BottleneckLayer inside a GenericLayer."""
    width: int
    out_planes: int
    stride: int
    groups: int

    @nn.compact
    def __call__(self, x):
        residual = x
        if self.stride != 1 or x.shape[-1] != self.out_planes:
            residual = nn.Conv(self.out_planes, (1, 1), (self.stride, self.stride), padding="VALID",
                               use_bias=False, name="downsample_0")(x)
            residual = _bn("downsample_1")(residual)
        h = nn.relu(_bn("cb_1")(nn.Conv(self.width, (1, 1), use_bias=False, name="cb_0")(x)))
        h = nn.Conv(self.width, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)),
                    feature_group_count=self.groups, use_bias=False, name="cb_3")(h)
        h = nn.relu(_bn("cb_4")(h))
        h = _bn("bn")(nn.Conv(self.out_planes, (1, 1), use_bias=False, name="cb_6")(h))
        return nn.relu(h + residual)


class Trunk(nn.Module):
    """ResNet-50 / ResNeXt101-32x4d trunk: [B, H, W, 3] → [B, H/32, W/32, 2048]."""
    arch: Arch

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, name="stem_0")(x)
        x = nn.relu(_bn("stem_1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, (depth, width) in enumerate(zip(self.arch.depths, self.arch.widths)):
            for j in range(depth):
                x = Bottleneck(width, OUT_PLANES[i], 2 if (j == 0 and i > 0) else 1, self.arch.groups,
                               name=f"block{i}_{j}")(x)
        return x


class SSCD(nn.Module):
    """Trunk → GeM(p=3) → Linear(2048 → dims) → L2 normalisation; returns (embedding, trunk features)."""
    arch: Arch

    @nn.compact
    def __call__(self, x):
        feats = Trunk(self.arch, name="trunk")(x)
        pooled = jnp.mean(jnp.maximum(feats, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
        emb = nn.Dense(self.arch.dims, name="proj")(pooled)
        return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12), feats


def preprocess(images, size=320):
    """[B, H, W, C] in [−1, 1] → bilinear resize to size×size, ImageNet mean/std normalised RGB."""
    x = (jnp.asarray(images, jnp.float32) + 1) / 2
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = jax.image.resize(x, (x.shape[0], size, size, 3), method="bilinear", antialias=False)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def save_variables(out_dir, arch_name, variables):
    """Write converted variables as sscd.npz (no pickle) + meta.json."""
    os.makedirs(out_dir, exist_ok=True)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
    np.savez(os.path.join(out_dir, "sscd.npz"), **flat)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump({"arch": arch_name, "format": "jaxrepro-sscd-1"}, f)


def load_variables(ckpt_dir):
    """(arch, variables) from a directory written by the converter."""
    ckpt_dir = os.path.expanduser(ckpt_dir)
    meta_path, npz_path = os.path.join(ckpt_dir, "meta.json"), os.path.join(ckpt_dir, "sscd.npz")
    if not (os.path.exists(meta_path) and os.path.exists(npz_path)):
        raise FileNotFoundError(
            f"no converted SSCD checkpoint in {ckpt_dir!r}. Download the official TorchScript file "
            f"(sscd_disc_large.torchscript.pt or sscd_disc_mixup.torchscript.pt, from the SSCD repository "
            f"facebookresearch/sscd-copy-detection) and convert it once: pip install '.[sscd]' && "
            f"python -m jaxrepro.descriptors convert --torchscript FILE --out {ckpt_dir}")
    with open(meta_path) as f:
        arch = ARCHS[json.load(f)["arch"]]
    variables = {}
    with np.load(npz_path, allow_pickle=False) as z:
        for key in z.files:
            node = variables
            *parents, leaf = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = jnp.asarray(z[key])
    return arch, variables


class SSCDDescriptor:
    """Descriptor interface over a converted SSCD checkpoint: cosine of L2-normalised embeddings."""
    name = "sscd"
    kind = "dot"
    threshold = 0.6       # the paper's fixed threshold (Zhang et al.; Pizzi et al.'s copy-detection setting)

    def __init__(self, checkpoint, batch_size=32, size=320):
        self.arch, self.variables = load_variables(checkpoint)
        model = SSCD(self.arch)
        self.batch_size = batch_size
        self._embed = jax.jit(lambda v, x: model.apply(v, preprocess(x, size))[0])

    def embed(self, images):
        """[B, *image] in [−1, 1] → [B, dims] unit descriptors, in batches."""
        images = np.asarray(images)
        return jnp.concatenate([self._embed(self.variables, images[i:i + self.batch_size])
                                for i in range(0, len(images), self.batch_size)])

    def similarity(self, a, b):
        return jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)

    def pair_similarity(self, a, b):
        return jnp.sum(a * b, axis=1)
