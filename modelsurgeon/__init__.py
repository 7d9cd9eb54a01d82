"""modelsurgeon: streaming surgery on neural-network checkpoints.

The code lives in the top-level folders cli/, ops/, kernels/ and recipes/ of the repository;
setuptools' package-dir maps them to modelsurgeon.cli, .ops, .kernels and .recipes. This package
holds the version, the `python -m` entry, and the Python API (``modelsurgeon.api``), whose functions
are importable from here: ``from modelsurgeon import prune, report``. They load on first use, so
``import modelsurgeon`` stays light.
"""

__version__ = "0.1.0"

_API = {"report", "prune", "quantize", "dequantize", "merge", "extract_lora", "intrinsic_dim", "expand_subspace"}


def __getattr__(name: str):
    if name in _API:
        from . import api

        if hasattr(api, name):
            return getattr(api, name)
    if name == "SurgeonError":
        from modelsurgeon.ops.core.errors import SurgeonError

        return SurgeonError
    raise AttributeError(f"module 'modelsurgeon' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API, "SurgeonError"])
