"""A stride-1 NHWC/HWIO convolution whose weight gradient is the C++ kernel conv_weight_grad.cc on XLA:CPU.

`weight_term(x, tw, padding)` is conv(x, tw) as a JAX primitive, bilinear in (x, tw): evaluated (or
differentiated forward) it is XLA's convolution; transposed in tw — the weight gradient of reverse mode —
it is `weight_grad(x, ct)`, which runs the kernel (≈ 2× XLA's weight-gradient convolution on a 2-core AVX-512
CPU, see README Benchmarks) and whose own derivatives (second order) are XLA's. Transposed in x, under vmap
and for other dtypes it is XLA's throughout, so every derivative equals the plain convolution's up to float32
summation order — except that a NaN or ±inf in the cotangent at a border pixel reaches only the taps that
see real pixels, where XLA's zero padding times NaN spreads it to all (the gradient is non-finite either way).
Under vmap the kernel runs once per example (ffi "sequential").
"""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxrepro.models import cpu_kernels


def conv(x, w, padding, lhs="NHWC"):
    """Stride-1 convolution, `lhs` input layout, NHWC output, HWIO kernel, `padding` pixels on every side."""
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=(lhs, "HWIO", "NHWC"))


def weight_grad_xla(x, ct, kernel_hw, padding):
    """∂⟨ct, conv(x, w)⟩/∂w [KH, KW, Ci, Co] by XLA (x [N, H, W, Ci], ct [N, Ho, Wo, Co])."""
    w = jnp.zeros((*kernel_hw, x.shape[-1], ct.shape[-1]), jnp.result_type(x, ct))
    return jax.vjp(lambda w: conv(x, w, padding), w)[1](ct)[0]


def varying(*xs):
    """True if any of xs varies over a manual mesh axis (inside jax.shard_map), where an FFI call's result
    would not carry that mark: there the convolutions stay XLA's."""
    return any(getattr(getattr(jax.typeof(x), "manual_axis_type", None), "varying", None) for x in xs)


def kernel_applies(x, ct):
    """True where weight_grad runs the C++ kernel: float32 rank-4 operands on one CPU device with it built, not
    varying inside shard_map, and output channels a multiple of 16 (whole vectors on every ISA; e.g. the
    3-channel image conv stays with XLA)."""
    return (np.ndim(x) == 4 and np.ndim(ct) == 4 and x.dtype == ct.dtype == jnp.float32
            and ct.shape[-1] % 16 == 0 and jax.default_backend() == "cpu" and jax.device_count() == 1
            and not varying(x, ct) and cpu_kernels.available())


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _weight_grad_kernel(x, ct, kernel_hw, padding):
    out = jax.ShapeDtypeStruct((*kernel_hw, x.shape[-1], ct.shape[-1]), jnp.float32)
    call = jax.ffi.ffi_call(cpu_kernels.DW_TARGET, out, vmap_method="sequential")
    return call(x, ct, ph=np.int64(padding), pw=np.int64(padding))


@_weight_grad_kernel.defjvp
def _weight_grad_kernel_jvp(kernel_hw, padding, primals, tangents):
    (x, ct), (tx, tct) = primals, tangents          # bilinear: d = dw(tx, ct) + dw(x, tct), by XLA
    return (_weight_grad_kernel(x, ct, kernel_hw, padding),
            weight_grad_xla(tx, ct, kernel_hw, padding) + weight_grad_xla(x, tct, kernel_hw, padding))


def weight_grad(x, ct, kernel_hw, padding):
    """∂⟨ct, conv(x, w)⟩/∂w: the C++ kernel where `kernel_applies`, else XLA's."""
    if kernel_applies(x, ct):
        return _weight_grad_kernel(x, ct, tuple(kernel_hw), padding)
    return weight_grad_xla(x, ct, kernel_hw, padding)


weight_term_p = Primitive("jaxrepro_conv_weight_term")


def weight_term(x, tw, padding):
    """conv(x, tw, padding), whose transpose in tw is `weight_grad` (x [N, H, W, Ci], tw [KH, KW, Ci, Co])."""
    return weight_term_p.bind(x, tw, padding=padding)


def _abstract(x, tw, *, padding):
    n, h, w, _ = x.shape
    kh, kw, _, co = tw.shape
    shape = (n, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1, co)
    mat = x.manual_axis_type                        # inside shard_map: varying wherever either operand varies
    mat = mat.update(varying=mat.varying | tw.manual_axis_type.varying)
    return x.update(shape=shape, dtype=jnp.result_type(x.dtype, tw.dtype), manual_axis_type=mat)


def _transpose_x(ct, x, tw, *, padding):
    zeros = jnp.zeros(x.aval.shape, x.aval.dtype)
    return jax.vjp(lambda x: conv(x, tw, padding), zeros)[1](ct)[0]


def _transpose_w(ct, x, tw, *, padding):
    return weight_grad(x, ct, tw.aval.shape[:2], padding).astype(tw.aval.dtype)


def _batch(args, dims, *, padding):
    return jax.vmap(partial(conv, padding=padding), in_axes=dims)(*args), 0


def _impl(x, tw, *, padding):
    return conv(x, tw, padding)


weight_term_p.def_impl(_impl)
weight_term_p.def_abstract_eval(_abstract)
mlir.register_lowering(weight_term_p, mlir.lower_fun(_impl, multiple_results=False))
ad.defbilinear(weight_term_p, _transpose_x, _transpose_w)
batching.primitive_batchers[weight_term_p] = _batch
