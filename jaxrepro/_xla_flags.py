"""XLA:CPU settings jaxrepro applies before JAX starts (imported by jaxrepro/__init__.py, without jax).

jaxlib 0.10 sends CPU convolutions to YNNPACK library fusions by default; on x86 these run DDPM++'s
3×3 convolutions 2–3× slower than XLA's own (Eigen) convolutions — forward, input and weight gradient
(benchmarks/train_vs_torch.py, README "Benchmarks"). jaxrepro turns YNNPACK fusions off on the CPU
unless XLA_FLAGS already chooses, or JAXREPRO_XLA_CPU_TUNING=0. GPU and TPU are not affected.
"""
import importlib.metadata
import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
OPT_OUT = "JAXREPRO_XLA_CPU_TUNING"


def _jaxlib_has_flag():
    """True for jaxlib ≥ 0.10 (older jaxlibs abort on the unknown flag)."""
    try:
        major, minor = (int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (0, 10)


def tuned_xla_flags(environ):
    """XLA_FLAGS with YNNPACK fusions off appended, or unchanged (user's choice, opt-out, old jaxlib)."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get(OPT_OUT, "1") == "0" or YNN_FLAG[2:] in flags or not _jaxlib_has_flag():
        return flags
    return f"{flags} {YNN_FLAG}=".strip()


def apply(environ=os.environ):
    """Set XLA_FLAGS in `environ` when it adds something (takes effect if JAX's CPU backend has not started)."""
    flags = tuned_xla_flags(environ)
    if flags != environ.get("XLA_FLAGS", ""):
        environ["XLA_FLAGS"] = flags
