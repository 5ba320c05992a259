"""The C++ XLA FFI kernels for the CPU, built on first use: the [N,H,W,C] → [C,H,W,N] permutation
(nhwc_to_chwn.cc) and a stride-1 convolution's weight gradient (conv_weight_grad.cc, used through
models/conv_weight_grad.py).

XLA:CPU's weight-gradient convolution reads its input as [C,H,W,N], and XLA's own permutation to that
layout streams at 1–3 GB/s (it walks the input at a power-of-two stride). The permutation kernel copies pixel
blocks once and transposes them in registers (≈ 1.5× a memcpy); the weight-gradient kernel needs no
permutation at all and runs at ≈ 2× XLA's weight-gradient convolution. Both are compiled into one library
with the system C++ compiler ($CXX, c++, g++ or clang++) against jaxlib's FFI headers into a cache directory
($JAXREPRO_KERNEL_CACHE, else $XDG_CACHE_HOME/jaxrepro or ~/.cache/jaxrepro), keyed by the sources, jaxlib
version, compiler and flags. Where that fails (no compiler, no headers), `available()` is False, a warning says
why once, and callers use XLA's transpose and convolutions: the same numbers, slower. JAXREPRO_CPU_KERNELS=0
turns them off.
"""
import ctypes
import hashlib
import importlib.metadata
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

SOURCE = Path(__file__).with_name("nhwc_to_chwn.cc")
DW_SOURCE = Path(__file__).with_name("conv_weight_grad.cc")
TARGET = "jaxrepro_nhwc_to_chwn"
DW_TARGET = "jaxrepro_conv_weight_grad"
# ready: None (not tried), True, False; lib: the library registered with XLA in this process (once only)
_state = {"ready": None, "why": "", "lib": None}
_log = logging.getLogger(__name__)


def cache_dir():
    """Where built kernels are kept."""
    if os.environ.get("JAXREPRO_KERNEL_CACHE"):
        return Path(os.environ["JAXREPRO_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxrepro"


def _compiler():
    """The compiler command ($CXX split as a shell would, else c++, g++, clang++), or None."""
    if os.environ.get("CXX"):
        cmd = shlex.split(os.environ["CXX"])
        if cmd and shutil.which(cmd[0]):
            return [shutil.which(cmd[0]), *cmd[1:]]
        raise RuntimeError(f"$CXX={os.environ['CXX']!r} is not a usable compiler command")
    for c in ("c++", "g++", "clang++"):
        if shutil.which(c):
            return [shutil.which(c)]
    return None


def build(out_dir=None, defines=()):
    """Compile the kernel (or find it built) and return the shared library's path; raises on failure.
    `defines` (e.g. "JAXREPRO_NO_AVX2", the portable path) are passed as -D flags."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-Wno-psabi", *(f"-D{d}" for d in defines)]
    sources = [SOURCE, DW_SOURCE]
    key = hashlib.sha256(b"\0".join([*(f.read_bytes() for f in sources), importlib.metadata.version("jaxlib").encode(),
                                     " ".join(cxx + flags).encode(), platform.machine().encode()])).hexdigest()[:16]
    out_dir = Path(out_dir) if out_dir else cache_dir()
    lib = out_dir / f"cpu_kernels-{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)          # built aside, renamed into place whole
    os.close(fd)
    cmd = [*cxx, *flags, f"-I{jax.ffi.include_dir()}", *map(str, sources), "-o", tmp]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o755 & ~umask)                              # loadable by others sharing the cache
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return lib


def available():
    """True when the kernel is built and registered with XLA for the CPU (built on the first call)."""
    if _state["ready"] is None:
        if os.environ.get("JAXREPRO_CPU_KERNELS", "1") == "0":
            _state.update(ready=False, why="JAXREPRO_CPU_KERNELS=0")
            return False
        try:
            try:
                path = build()
            except OSError:                                        # the cache directory is not writable
                path = build(Path(tempfile.gettempdir()) / f"jaxrepro-{os.getuid()}")
            if _state["lib"] is None:                              # XLA refuses a second library under one name
                lib = ctypes.cdll.LoadLibrary(str(path))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.JaxreproNhwcToChwn), platform="cpu")
                jax.ffi.register_ffi_target(DW_TARGET, jax.ffi.pycapsule(lib.JaxreproConvWeightGrad), platform="cpu")
                _state["lib"] = lib
            _state.update(ready=True, why="")
        except Exception as e:                                     # any failure: XLA's transpose instead
            _state.update(ready=False, why=f"{type(e).__name__}: {e}")
            _log.warning("jaxrepro: the C++ CPU kernels are unavailable, XLA's (slower) transpose is used instead "
                         "(and XLA's weight-gradient convolution): %s", _state["why"])
    return _state["ready"]


def _permute(x):
    """x [..., N, H, W, C] → [..., C, H, W, N] with XLA's transpose."""
    r = x.ndim
    return jnp.transpose(x, (*range(r - 4), r - 1, r - 3, r - 2, r - 4))


@jax.custom_jvp
def _ffi_permute(x):
    *lead, n, h, w, c = x.shape
    out = jax.ShapeDtypeStruct((*lead, c, h, w, n), x.dtype)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="broadcast_all")(x)


_ffi_permute.defjvp(lambda primals, tangents: (_ffi_permute(*primals), _permute(*tangents)))


def nhwc_to_chwn(x):
    """x [..., N, H, W, C] → [..., C, H, W, N]: the C++ kernel for float32 where it is available, else XLA's."""
    if x.ndim < 4:
        raise ValueError(f"nhwc_to_chwn: x has shape {x.shape}; needs [..., N, H, W, C] (rank ≥ 4)")
    if x.dtype != jnp.float32 or x.size == 0 or jax.default_backend() != "cpu" or not available():
        return _permute(x)
    return _ffi_permute(x)
