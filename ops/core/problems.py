"""One way to collect what is wrong with a plan and report it all at once.

    problems = Problems("the merge")
    problems.add("rows are not a multiple of 4", tensor=name)
    problems.raise_if_any(hint="exclude it with --exclude")

Problems with the same message are grouped, so one mistake repeated over 300 tensors is one line
naming the first tensor and the count. One problem is raised as a plain one-line ``SurgeonError``
(with the hint); several as a ``PlanError`` listing each on its own line.
"""

from __future__ import annotations

from .errors import PlanError, SurgeonError, UsageError


class Problems:
    def __init__(self, what: str = "the inputs", usage: bool = False):
        self.what = what
        self.usage = usage  # bad flags (exit 2) rather than bad inputs (exit 1)
        self._by_msg: dict[str, list[str]] = {}

    def add(self, message: str, tensor: str | None = None) -> None:
        tensors = self._by_msg.setdefault(message, [])
        if tensor is not None:
            tensors.append(tensor)

    def extend(self, messages) -> None:
        for m in messages:
            self.add(m)

    def __bool__(self) -> bool:
        return bool(self._by_msg)

    def __len__(self) -> int:
        return len(self._by_msg)

    def lines(self) -> list[str]:
        out = []
        for msg, tensors in self._by_msg.items():
            if len(tensors) == 1:
                out.append(f"{tensors[0]}: {msg}")
            elif tensors:
                out.append(f"{msg} (in {len(tensors)} tensors, e.g. {tensors[0]})")
            else:
                out.append(msg)
        return out

    def error(self, hint: str | None = None) -> SurgeonError:
        lines = self.lines()
        if len(lines) == 1:
            return (UsageError if self.usage else SurgeonError)(lines[0], hint)
        err = PlanError(lines, self.what)
        if self.usage:
            err.exit_code = 2
        return err

    def raise_if_any(self, hint: str | None = None) -> None:
        if self:
            raise self.error(hint)
