"""Target selection defaults, and the folder a transformation writes loading in transformers."""

from __future__ import annotations

import pytest
import torch

from modelsurgeon.ops.core.errors import SurgeonError, UsageError
from modelsurgeon.ops.io.checkpoint import open_checkpoint
from modelsurgeon.ops.io.output import OutputDir, write_folder
from modelsurgeon.ops.io.targets import select_targets
from modelsurgeon.ops.io.writer import TensorSpec


def test_default_targets_on_minilm(minilm_dir):
    with open_checkpoint(minilm_dir) as ck:
        names = select_targets(ck)
    # 6 layers x (q, k, v, attention output, intermediate, output) + the pooler
    assert len(names) == 6 * 6 + 1
    assert not any("embeddings" in n or "LayerNorm" in n or n.endswith("bias") for n in names)


def test_default_targets_on_llama(tiny_llama):
    with open_checkpoint(tiny_llama) as ck:
        names = select_targets(ck)
    assert len(names) == 2 * 7 and not any("embed" in n or "lm_head" in n or "norm" in n for n in names)


def test_include_exclude(minilm_dir):
    with open_checkpoint(minilm_dir) as ck:
        assert select_targets(ck, include=r"word_embeddings") == ["embeddings.word_embeddings.weight"]
        assert len(select_targets(ck, exclude=r"pooler")) == 36
        with pytest.raises(SurgeonError, match="matches no"):
            select_targets(ck, include="nothing-like-this")
        with pytest.raises(UsageError, match="regular expression"):
            select_targets(ck, exclude="(")


def test_write_folder_roundtrip_loads_in_transformers(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    with open_checkpoint(tiny_llama) as ck:
        specs = [TensorSpec(i.name, i.shape, i.torch_dtype) for i in ck.infos()]
        out = OutputDir(tmp_path / "copy")
        write_folder(out, specs, ck.iter_tensors(), source=ck, command="test", max_shard_size=100_000)
    assert (tmp_path / "copy" / "model.safetensors.index.json").exists()
    a = AutoModelForCausalLM.from_pretrained(tiny_llama)
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(a(ids).logits, b(ids).logits)


def test_failure_mid_stream_leaves_nothing(tmp_path, small_ckpt):
    def boom():
        yield "a", torch.zeros(2)
        raise RuntimeError("op failed")

    with open_checkpoint(small_ckpt) as ck:
        with pytest.raises(RuntimeError):
            write_folder(
                OutputDir(tmp_path / "o"),
                [TensorSpec("a", (2,), torch.float32), TensorSpec("b", (1,), torch.float32)],
                boom(),
                source=ck,
                command="t",
                max_shard_size=10**9,
            )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]
