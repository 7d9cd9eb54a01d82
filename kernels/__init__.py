"""Triton kernels, and the one switch that decides whether Triton can run here.

This package is the only place that imports triton. Kernel modules (``kernels/<op>.py``) import it at
their top and are themselves imported only once the switch says yes, so ``surgeon --help`` and CPU-only
installs never pay for it. Each kernel's pure-PyTorch reference, the spec and the CPU path, lives in
``ops/<family>/<op>.py`` under the same name; each public op takes ``use_triton=None`` (auto):

- auto: Triton on a CUDA tensor when triton imports; the torch reference otherwise;
- True: Triton, also on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check kernels without a
  GPU); an error if that is impossible;
- False: the torch reference.
"""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def should_use_triton(device, use_triton: bool | None = None) -> bool:
    """Decide the path for a tensor on ``device`` (a torch.device or its string)."""
    dev_type = getattr(device, "type", str(device).split(":")[0])
    if use_triton is False:
        return False
    # the device test comes first: importing triton costs about a second, which CPU runs never need
    possible = (dev_type == "cuda" or (dev_type == "cpu" and interpreting())) and triton_importable()
    if use_triton is None:
        return possible and dev_type == "cuda"
    if not possible:
        why = (
            "triton is not installed"
            if not triton_importable()
            else "Triton needs a CUDA device (or TRITON_INTERPRET=1 on the CPU)"
        )
        raise RuntimeError(f"use_triton=True but {why}")
    return True
