"""Choosing where the math runs (`--device auto|cpu|cuda|cuda:N`)."""

from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(flag: str = "auto") -> torch.device:
    flag = (flag or "auto").strip().lower()
    if flag == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(flag)
    except RuntimeError:
        raise UsageError(f"--device {flag!r} is not a device", "use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {flag} asked for CUDA, but torch sees no GPU", "use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {flag}: only {torch.cuda.device_count()} GPU(s) present")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {flag!r} is not supported", "use auto, cpu, cuda or cuda:N")
    return dev
