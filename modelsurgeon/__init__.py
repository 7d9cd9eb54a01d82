"""modelsurgeon: streaming surgery on neural-network checkpoints.

The code lives in the top-level folders cli/, ops/, kernels/ and recipes/ of the
repository; setuptools' package-dir maps them to modelsurgeon.cli, .ops, .kernels
and .recipes. This package holds only the version and the `python -m` entry.
"""

__version__ = "0.1.0"
