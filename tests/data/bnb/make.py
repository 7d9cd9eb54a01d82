"""Make the bitsandbytes fixtures: a tiny Llama saved by transformers with bitsandbytes 4-bit (NF4, NF4 with
double quantization, FP4) and 8-bit (LLM.int8), and bitsandbytes' own dequantization of each weight, as loaded back from those files, recorded as a
sha256 of its bytes (cast to the model's dtype, bfloat16).

    python tests/data/bnb/make.py OUT_DIR

tests/ops/io/test_quantized_bitsandbytes.py calls ``make(folder)`` once per session (bitsandbytes is a test
dependency: it runs on the CPU); nothing is committed. Checked with bitsandbytes 0.50.2, transformers 5.24.0,
torch 2.13.0 (CPU)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def make(root: Path) -> Path:
    """Write root/{nf4,nf4-double,fp4,int8}/ (model.safetensors, config.json, reference.json); return root."""
    import bitsandbytes
    import bitsandbytes.functional as F
    from builders import make_tiny_llama
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tmp = Path(tempfile.mkdtemp())
    src = make_tiny_llama(tmp / "src", hidden_size=64, intermediate_size=128, num_hidden_layers=1, vocab_size=64)
    configs = {
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16),
        "nf4-double": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        ),
        "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
        "int8": BitsAndBytesConfig(load_in_8bit=True),
    }
    for name, cfg in configs.items():
        m = AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, dtype=torch.bfloat16, device_map="cpu")
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        m.save_pretrained(out)
        (out / "generation_config.json").unlink(missing_ok=True)
        m = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")  # what a user of these files gets
        ref = {}
        for n, mod in m.named_modules():
            w = getattr(mod, "weight", None)
            if w is not None and getattr(w, "quant_state", None) is not None:
                ref[n + ".weight"] = digest(F.dequantize_4bit(w.data, w.quant_state).to(torch.bfloat16))
            elif w is not None and getattr(w, "SCB", None) is not None:
                ref[n + ".weight"] = digest(F.int8_vectorwise_dequant(w.data, w.SCB).to(torch.bfloat16))
        meta = {"bitsandbytes": bitsandbytes.__version__, "dequantized_bf16_sha256": ref}
        (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(tmp)
    return root


if __name__ == "__main__":
    make(Path(sys.argv[1]))
