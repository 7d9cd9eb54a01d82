"""The exceptions a user can act on.

Everything the user can fix is a ``SurgeonError`` carrying one line that says what happened and
what to do. The CLI prints it on stderr and exits with its ``exit_code``; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class SurgeonError(Exception):
    """A failure the user can fix (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class UsageError(SurgeonError):
    """Bad flags or arguments (exit code 2)."""

    exit_code = 2


class CheckpointError(SurgeonError):
    """A checkpoint that cannot be found, opened or trusted."""


class PlanError(SurgeonError):
    """Several problems found before any work started; one per line after the first."""

    def __init__(self, problems: list[str], what: str = "the inputs"):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} with {what}, nothing was written"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C (temporary output removed), then exits 128 + signal."""

    def __init__(self, signum: int, name: str):
        super().__init__(name)
        self.signum, self.name = signum, name


class SurgeonNote(UserWarning):
    """Something the user should know that is not a failure (``warnings.warn(..., SurgeonNote)``): the CLI
    prints it as one ``note:`` line on stderr; a library caller sees an ordinary warning."""


# errno -> what to do, for the failures of writing an output that the user can fix
WRITE_ERRNOS = {
    28: "free some space, or write elsewhere with -o",  # ENOSPC
    122: "free some space (a disk quota is full), or write elsewhere with -o",  # EDQUOT
    27: "the file is larger than this file system allows; write elsewhere with -o",  # EFBIG
    30: "the file system is read-only; write elsewhere with -o",  # EROFS
    13: "you have no permission to write there; write elsewhere with -o",  # EACCES
    1: "you have no permission to write there; write elsewhere with -o",  # EPERM
}


def write_error(e: OSError, where) -> SurgeonError | None:
    """A one-line error for an OSError of writing ``where`` that the user can fix, or None."""
    hint = WRITE_ERRNOS.get(getattr(e, "errno", None) or 0)
    if hint is None:
        return None
    return SurgeonError(f"cannot write {where}: {e.strerror or e}", hint)
