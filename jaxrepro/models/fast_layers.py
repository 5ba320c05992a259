"""GroupNorm, convolution, per-channel adds and fusion barriers in the forms XLA:CPU runs fast.

Autodiff transposes a broadcast into a reduce-sum, and XLA:CPU lowers a reduce over batch and pixels
of an NHWC activation to a strided loop: 12–23 ms for one [64,32,32,64] bias gradient, where a matmul
with a ones vector takes ~1.2 ms. Writing every broadcast of a per-channel vector as an outer product
with ones makes its transpose a matmul, in reverse and forward mode alike (grad, jvp and vmap all work).
GroupNorm's per-channel repeat of its [B, G] statistics is a matmul with a 0/1 group matrix (computed once,
instead of an integer division per activation element).
1×1 convolutions are matmuls on [B·H·W, C] (XLA:CPU runs their weight gradient as a whole-image convolution
after permuting both operands). Off the CPU the plain broadcast and convolution are used. Parameters (names,
shapes, initialisers) are those of flax's nn.GroupNorm and nn.Conv, so checkpoints and EDM imports are unchanged.

`materialize` stops XLA from recomputing a long elementwise chain (the UNet's residual stream and, in the
backward pass, its gradient) inside every consumer: before it, DDPM++'s step had 63 fusions reading
100–770 MB each to write 4–17 MB. `materialize_tangent` does the same for a gradient alone.
"""
from contextlib import contextmanager
from functools import partial
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxrepro.models import cpu_kernels
from jaxrepro.models.conv_weight_grad import conv as _conv, kernel_applies, varying, weight_term

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
    return _barrier(x, x.reshape(-1)[0])


def _barrier(v, probe):
    """v through a conditional whose branches both give v, on a runtime predicate from the scalar probe."""
    return jax.lax.cond(probe == probe + 1, lambda v: v * 1, lambda v: v, v)


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
    if _cpu_forms():
        x = materialize_tangent(x)        # dx once: XLA:CPU otherwise recomputes it for each consumer's shape
    xs = x.reshape(b, -1, c).astype(jnp.float32)                   # [B, n, C]
    count = xs.shape[1] * (c // g)
    s1, s2 = checkpoint_name((total(xs), total(xs * xs)), "group_norm_sums")      # [B, C] each
    group_sum, repeat = _group_ops(g, c)
    mean = group_sum(s1) / count                                   # [B, G]
    var = jnp.maximum(group_sum(s2) / count - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + eps)
    scale32 = scale.astype(jnp.float32)
    a = scale32 * repeat(rstd)                                     # [B, C]
    d = bias.astype(jnp.float32) - repeat(mean * rstd) * scale32
    y = xs * spread(a, xs.shape[1]) + spread(d, xs.shape[1])
    y = y.astype(jnp.result_type(x.dtype, scale.dtype, bias.dtype)).reshape(x.shape)
    if _cpu_forms():
        y = materialize_tangent(y)        # the backward's dy, read by the two sums and by dx, is computed once
    return nn.silu(y) if silu else y


@jax.custom_jvp
def materialize_tangent(x):
    """x, unchanged; its tangent and (transposed) its cotangent are computed once behind a fusion barrier, so
    XLA:CPU does not recompute a gradient's elementwise chain inside each of its consumers (GroupNorm's
    backward: its two per-channel sums and dx each re-reading the incoming gradient, x, the sigmoid and
    the dropout mask)."""
    return x


@materialize_tangent.defjvp
def _materialize_tangent_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    if x.size == 0:
        return x, t
    return x, _barrier(t, x.reshape(-1)[0])          # a predicate from the primal keeps this linear in t


def _group_ops(g, c):
    """(group sum [B, C] → [B, G], repeat [B, G] → [B, C]). On the CPU the repeat is a matmul with the 0/1
    group matrix (exact for finite values: one term per output), so XLA computes the [B, C] values once;
    fused into the elementwise pass it costs an integer division per activation element (forward
    GroupNorm+SiLU on [64,1024,128]: 2.8 → 1.6 ns per element). A NaN statistic (a NaN or ±inf input)
    then reaches every channel of its example, not only its group's — as it does after the next conv."""
    group_sum = lambda u: u.reshape(u.shape[0], g, -1).sum(-1)
    if not _cpu_forms():
        return group_sum, (lambda u: jnp.repeat(u, c // g, axis=1))
    e = (jnp.arange(c)[None, :] // (c // g) == jnp.arange(g)[:, None]).astype(jnp.float32)    # [G, C]
    return group_sum, (lambda u: jnp.dot(u, e, precision=_HI))


class Conv(nn.Module):
    """nn.Conv (NHWC, HWIO kernel, stride 1, symmetric integer padding) with a matmul-summed bias; with
    split = k > 1 it returns k arrays, output channel j·k + i in the i-th (EDM's interleaved q, k, v), each
    computed from its own kernel columns instead of sliced out of one output (whose gradient XLA:CPU would
    assemble from k zero-padded copies)."""
    features: int
    kernel_size: Sequence[int]
    padding: int = 0
    kernel_init: Callable = nn.initializers.lecun_normal()
    split: int = 1

    @nn.compact
    def __call__(self, x):
        if self.features % self.split:
            raise ValueError(f"Conv: {self.features} features do not split into {self.split} parts")
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = jnp.result_type(x.dtype, kernel.dtype, bias.dtype)                     # as flax
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if self.split == 1:
            return add_bias(self._conv(x, kernel), bias)                               # cast to y's dtype
        k = self.split
        return tuple(add_bias(self._conv(x, kernel[..., i::k]), bias[i::k]) for i in range(k))

    def _conv(self, x, kernel):
        if _cpu_forms() and tuple(self.kernel_size) == (1, 1) and self.padding == 0:
            # a matmul on [B·H·W, C]: its weight gradient is one transposed-operand matmul, where XLA:CPU
            # runs a 1×1 convolution's as a convolution over the whole image after permuting both operands
            return jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0]).reshape(*x.shape[:-1], kernel.shape[-1])
        if _cpu_forms() and _chwn_kernel():
            return conv_cpu(x, kernel, self.padding)
        return _conv(x, kernel, self.padding)


def _chwn_kernel():
    """True where conv_cpu's kernel runs: XLA:CPU on one device (XLA cannot partition the custom call
    over several; there the plain convolution keeps the batch sharded) with the kernel built."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1 and cpu_kernels.available()


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def conv_cpu(x, w, padding):
    """_conv(x, w, padding) whose weight gradient is a C++ kernel: for 16k output channels the weight term
    is conv_weight_grad.weight_term, transposed by conv_weight_grad.cc (≈ 2× XLA's weight-gradient
    convolution); otherwise XLA's weight-gradient convolution reads x permuted to [C,H,W,N] by the
    nhwc_to_chwn kernel, its operand layout, so XLA does not permute x itself. Every derivative, forward
    and reverse, of any order, equals the plain convolution's (see conv_weight_grad for a NaN at a border).
    Inside shard_map, where a value varies over a manual axis, XLA's convolutions are used throughout."""
    return _conv(x, w, padding)


@partial(conv_cpu.defjvp, symbolic_zeros=True)
def _conv_cpu_jvp(padding, primals, tangents):
    (x, w), (tx, tw) = primals, tangents
    terms = [] if type(tx) is jax.custom_derivatives.SymbolicZero else [_conv(tx, w, padding)]
    if type(tw) is not jax.custom_derivatives.SymbolicZero:
        if kernel_applies(x, tw):                              # (tw [KH, KW, Ci, Co]: its Co and dtype)
            terms.append(weight_term(x, tw, padding))          # transposed: the C++ weight-gradient kernel
        elif varying(x, tw):                                   # inside shard_map: XLA's (FFI calls lose the mark)
            terms.append(_conv(x, tw, padding))
        else:
            terms.append(_conv(cpu_kernels.nhwc_to_chwn(x), tw, padding, lhs="CHWN"))
    y = _conv(x, w, padding)
    return y, (sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y))
