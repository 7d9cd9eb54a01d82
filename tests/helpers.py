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


def ggml_quantize(x, qtype: str, imatrix=None):
    """llama.cpp's ``ggml_quantize_chunk`` on a 2-D float32 array: uint8 (rows, row bytes)."""
    import ctypes
    from pathlib import Path

    import gguf
    import llama_cpp
    import numpy as np

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    t = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[t]
    out = np.zeros((rows, cols // block * size), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    n = f(int(t), x.ctypes.data, out.ctypes.data, 0, rows, cols, None if im is None else im.ctypes.data)
    assert n == out.nbytes
    return out
