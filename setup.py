"""jaxrepro: reproducibility and consistency of diffusion models, against the closed-form optimal denoiser."""
from setuptools import find_packages, setup

setup(
    name="jaxrepro",
    version="0.1.0",
    description="Learned vs closed-form optimal denoisers in JAX/Flax (Zhang et al., ICML 2024)",
    # the configs travel with the package, so `--config=/path/to/configs/x.py` works from any directory
    packages=find_packages(include=["jaxrepro", "jaxrepro.*", "configs", "configs.*"]),
    package_data={"jaxrepro.models": ["*.cc"]},     # C++ kernels, compiled on first use (models/cpu_kernels.py)
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "numpy>=2.0,<3",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib_resources",      # tensorflow-datasets 4.9.10 imports it without declaring it
        "ml-collections>=1.1.0,<2",
        "absl-py>=2.5.1,<3",
        "matplotlib>=3.11.2,<4",
        "scikit-learn>=1.3",        # the embedded digits data set
        "scipy>=1.10",
    ],
    extras_require={
        "test": ["pytest>=8"],
        "sscd": ["torch==2.13.0"],          # weight conversion only
        "cifar": ["tensorflow-cpu"],        # needed once, to prepare CIFAR with tfds
    },
)
