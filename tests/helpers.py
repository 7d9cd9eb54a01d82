"""Run the CLI in-process the way a user does, and check the conventions every command keeps."""

from __future__ import annotations

import json

from modelsurgeon.cli.main import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args: str) -> dict:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def assert_one_line_error(code: int, out: str, err: str, expected_code: int, *needles: str) -> None:
    """Exit code first, then: one line on stderr, no traceback, nothing on stdout."""
    assert code == expected_code, (code, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, err)
    assert out == "", out
