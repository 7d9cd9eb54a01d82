"""Which tensors a command changes. Shared by prune, quantize and any per-tensor surgery.

Default targets are the 2-D float weights of linear layers: embeddings, the LM head, norms, biases
and non-float tensors are left alone. ``include`` replaces that default rule with a regex over float
tensors; ``exclude`` removes matches from whatever was selected. Patterns use ``re.search`` semantics, matched with a time bound (``core.patterns``).
"""

from __future__ import annotations

from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.core.names import is_linear_weight
from modelsurgeon.ops.core.patterns import UserPattern

from .checkpoint import Checkpoint, TensorInfo


def compile_regex(pattern: str | None, flag: str) -> UserPattern | None:
    """A user's pattern, matched with a time bound (``core.patterns``), or None."""
    return None if pattern is None else UserPattern(pattern, flag)


def is_default_target(info: TensorInfo) -> bool:
    return info.is_float and len(info.shape) == 2 and is_linear_weight(info.name)


def select_targets(
    ck: Checkpoint,
    include: str | None = None,
    exclude: str | None = None,
    include_flag: str = "--include",
    exclude_flag: str = "--exclude",
) -> list[str]:
    """Names of the tensors to change, in checkpoint order. Raises when a pattern matches nothing."""
    inc = compile_regex(include, include_flag)
    exc = compile_regex(exclude, exclude_flag)
    infos = ck.infos()
    if inc is not None:
        chosen = [i for i in infos if i.is_float and inc.search(i.name)]
        if not chosen:
            raise SurgeonError(
                f"{include_flag} {include!r} matches no float tensor of {ck.label}", "list names with `surgeon report MODEL`"
            )
    else:
        chosen = [i for i in infos if is_default_target(i)]
    if exc is not None:
        if not any(exc.search(i.name) for i in infos):
            raise SurgeonError(
                f"{exclude_flag} {exclude!r} matches no tensor of {ck.label}", "list names with `surgeon report MODEL`"
            )
        chosen = [i for i in chosen if not exc.search(i.name)]
    return [i.name for i in chosen]
