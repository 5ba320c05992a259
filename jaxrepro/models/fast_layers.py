"""GroupNorm, convolution, per-channel adds and a fusion barrier in the forms XLA:CPU runs fast.

Autodiff transposes a broadcast into a reduce-sum, and XLA:CPU lowers a reduce over batch and pixels
of an NHWC activation to a strided loop: 12–23 ms for one [64,32,32,64] bias gradient, where a matmul
with a ones vector takes ~1.2 ms. Writing every broadcast of a per-channel vector as an outer product
with ones makes its transpose a matmul, in reverse and forward mode alike (grad, jvp and vmap all work).
Convolutions other than 1×1 (`conv_cpu`) have one custom JVP rule, exact in both modes, that hands the weight
gradient x already permuted to [C,H,W,N]: XLA:CPU's own N↔C permutation there runs at ~1 GB/s.
Off the CPU the plain broadcast and convolution are used. Parameters (names, shapes,
initialisers) are those of flax's nn.GroupNorm and nn.Conv, so checkpoints and EDM imports are unchanged.

`materialize` stops XLA from recomputing a long elementwise chain (the UNet's residual stream and, in the
backward pass, its gradient) inside every consumer: before it, DDPM++'s step had 63 fusions reading
100–770 MB each to write 4–17 MB.
"""
from contextlib import contextmanager
from functools import partial
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero

_HI = jax.lax.Precision.HIGHEST
CPU_FORMS: Optional[bool] = None      # None: these forms on the CPU backend only; tests set True/False


def _cpu_forms():
    return jax.default_backend() == "cpu" if CPU_FORMS is None else CPU_FORMS


@contextmanager
def forms(cpu):
    """Trace with the CPU forms on (True) or the plain ones (False) whatever the backend, then restore."""
    global CPU_FORMS
    old, CPU_FORMS = CPU_FORMS, cpu
    try:
        yield cpu
    finally:
        CPU_FORMS = old


def materialize(x):
    """x, computed once: on the CPU a fusion barrier (forward and backward) so XLA does not recompute the
    elementwise chain behind x, e.g. a residual stream, inside every consumer (XLA:CPU drops
    optimization_barrier before fusion; a conditional whose branches both return x survives)."""
    if not _cpu_forms() or x.size == 0:
        return x
    probe = x.reshape(-1)[0]
    return jax.lax.cond(probe == probe + 1, lambda v: v * 1, lambda v: v, x)     # both branches give x


def spread(v, n):
    """v [B, C] → [B, n, C], each row of v repeated n times."""
    if not _cpu_forms():
        return jnp.broadcast_to(v[:, None, :], (v.shape[0], n, v.shape[1]))
    return jnp.einsum("bnk,bkc->bnc", jnp.ones((v.shape[0], n, 1), v.dtype), v[:, None, :], precision=_HI)


def total(x):
    """x [B, n, C] → [B, C] summed over n (float32 for float32 or bfloat16 input)."""
    if not _cpu_forms():
        return x.sum(1, dtype=jnp.float32)
    ones = jnp.ones((x.shape[0], 1, x.shape[1]), x.dtype)
    return jnp.einsum("bkn,bnc->bkc", ones, x, precision=_HI, preferred_element_type=jnp.float32)[:, 0]


def add_per_example(x, v):
    """x [B, ..., C] + v [B, C] broadcast over the middle axes, v cast to x's dtype (as EDM casts the
    noise-embedding affine to the activations' dtype under mixed precision)."""
    b, c = x.shape[0], x.shape[-1]
    return x + spread(v.astype(x.dtype), x.size // (b * c)).reshape(x.shape)


def add_bias(x, bias):
    """x [B, ..., C] + bias [C]; the gradient sums per example first (a batched matvec, ~5× faster on
    XLA:CPU than one [1, B·H·W] × [B·H·W, C] matvec)."""
    if x.ndim < 2 or x.size == 0:
        return x + bias.astype(x.dtype)
    return add_per_example(x, jnp.broadcast_to(bias.astype(x.dtype), (x.shape[0], x.shape[-1])))


class GroupNorm(nn.Module):
    """nn.GroupNorm (fast variance E[x²] − E[x]², statistics in float32) on x [B, H, W, C], then SiLU if
    `silu`; on the CPU that pair is recomputed in the backward pass from x and the statistics instead of
    storing the normalised values and the sigmoid (two full activations written and read back per layer)."""
    num_groups: int
    epsilon: float = 1e-6
    silu: bool = False

    @nn.compact
    def __call__(self, x):
        c, g = x.shape[-1], self.num_groups
        if c % g:
            raise ValueError(f"GroupNorm: {c} channels are not divisible into num_groups={g}")
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        f = partial(_group_norm, groups=g, eps=self.epsilon, silu=self.silu)
        if self.silu and _cpu_forms():
            f = jax.checkpoint(f, policy=jax.checkpoint_policies.save_only_these_names("group_norm_sums"))
        return f(x, scale, bias)


def _group_norm(x, scale, bias, groups, eps, silu):
    b, c, g = x.shape[0], x.shape[-1], groups
    xs = x.reshape(b, -1, c).astype(jnp.float32)                   # [B, n, C]
    count = xs.shape[1] * (c // g)
    s1, s2 = checkpoint_name((total(xs), total(xs * xs)), "group_norm_sums")      # [B, C] each
    mean = s1.reshape(b, g, -1).sum(-1) / count                    # [B, G]
    var = jnp.maximum(s2.reshape(b, g, -1).sum(-1) / count - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + eps)
    scale32 = scale.astype(jnp.float32)
    a = scale32 * jnp.repeat(rstd, c // g, axis=1)                                  # [B, C]
    d = bias.astype(jnp.float32) - jnp.repeat(mean * rstd, c // g, axis=1) * scale32
    y = xs * spread(a, xs.shape[1]) + spread(d, xs.shape[1])
    y = y.astype(jnp.result_type(x.dtype, scale.dtype, bias.dtype)).reshape(x.shape)
    return nn.silu(y) if silu else y


class Conv(nn.Module):
    """nn.Conv (NHWC, HWIO kernel, stride 1, symmetric integer padding) with a matmul-summed bias."""
    features: int
    kernel_size: Sequence[int]
    padding: int = 0
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = jnp.result_type(x.dtype, kernel.dtype, bias.dtype)                     # as flax
        conv = conv_cpu if _cpu_forms() and tuple(self.kernel_size) != (1, 1) else _conv
        y = conv(x.astype(dtype), kernel.astype(dtype), self.padding)
        return add_bias(y, bias)                                                        # cast to y's dtype


def _conv(x, w, padding, lhs="NHWC"):
    """Stride-1 convolution, HWIO kernel, NHWC output, `padding` pixels on every side."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=(lhs, "HWIO", "NHWC"))


def to_chwn(x):
    """x [N,H,W,C] → [C,H,W,N] in two passes that each read whole cache lines (XLA:CPU's one-pass N↔C
    permutation walks the input at a stride of H·W·C and re-reads every line ~16 times)."""
    n, h, w, c = x.shape
    y = materialize(jnp.transpose(x.reshape(n, h * w, c), (1, 2, 0)))                   # [HW, C, N]
    return jnp.transpose(y, (1, 0, 2)).reshape(c, h, w, n)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def conv_cpu(x, w, padding):
    """_conv(x, w, padding) whose weight derivative reads x as [C,H,W,N], the operand layout of XLA:CPU's
    weight-gradient convolution (so XLA does not permute x itself)."""
    return _conv(x, w, padding)


def _conv_cpu_jvp(padding, primals, tangents):
    (x, w), (tx, tw) = primals, tangents
    terms = [] if isinstance(tx, SymbolicZero) else [_conv(tx, w, padding)]
    if not isinstance(tw, SymbolicZero):
        terms.append(_conv(to_chwn(x), tw, padding, lhs="CHWN"))
    return _conv(x, w, padding), sum(terms[1:], terms[0])


conv_cpu.defjvp(_conv_cpu_jvp, symbolic_zeros=True)
