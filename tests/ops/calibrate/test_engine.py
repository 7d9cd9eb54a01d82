"""The layer-by-layer run is the model: every layer's output equals the full transformers forward, for every
architecture family the engine claims; the stream yields every tensor once, outer ones first, layers in order;
models it cannot walk fail with one line."""

from __future__ import annotations

import json

import pytest
import torch

from modelsurgeon.ops.calibrate.engine import LayerStream
from modelsurgeon.ops.calibrate.model import LayerwiseModel
from modelsurgeon.ops.core.errors import SurgeonError
from modelsurgeon.ops.io.checkpoint import open_checkpoint

SMALL = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "sliding_window": 8}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"num_key_value_heads": 4, "pad_token_id": 0}),
}


def build(tmp_path, arch: str, **over):
    import transformers

    cfg_name, model_name, extra = ARCHS[arch]
    cfg = getattr(transformers, cfg_name)(**{**SMALL, **extra, **over})
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(cfg).eval()
    folder = tmp_path / arch
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("arch", list(ARCHS))
def test_layer_outputs_equal_the_full_forward(tmp_path, arch):
    folder, model = build(tmp_path, arch)
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, output_hidden_states=True)
    with open_checkpoint(folder) as ck:
        lm = LayerwiseModel(ck, torch.device("cpu"))
        x, kw = lm.embed(ids)
        torch.testing.assert_close(x, full.hidden_states[0], atol=1e-6, rtol=1e-6)
        for i in range(lm.num_layers):
            with lm.layer(i) as layer, torch.no_grad():
                x = lm.call(layer, i, x, kw)
            if i < lm.num_layers - 1:
                torch.testing.assert_close(x, full.hidden_states[i + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lm.finish(ids, x), full.logits, atol=1e-5, rtol=1e-5)


def test_an_encoder_walks_too(tmp_path):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    model.save_pretrained(tmp_path / "bert")
    ids = torch.randint(0, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask, output_hidden_states=True)
    with open_checkpoint(tmp_path / "bert") as ck:
        lm = LayerwiseModel(ck, torch.device("cpu"))
        assert lm.kind == "encoder"
        x, kw = lm.embed(ids, mask)
        for i in range(lm.num_layers):
            with lm.layer(i) as layer, torch.no_grad():
                x = lm.call(layer, i, x, kw)
            torch.testing.assert_close(x, full.hidden_states[i + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lm.finish(ids, x, mask), full.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_the_stream_yields_every_tensor_once_layers_in_order(tmp_path):
    folder, _ = build(tmp_path, "llama")
    with open_checkpoint(folder) as ck:
        lm = LayerwiseModel(ck, torch.device("cpu"))
        stream = LayerStream(lm, [torch.randint(0, 128, (2, 16))])
        got = [(n, t) for n, t, _ in stream]
        assert [n for n, _ in got] == stream.order and sorted(stream.order) == sorted(ck.names())
        layers = [int(n.split(".")[2]) for n, _ in got if n.startswith("model.layers.")]
        assert layers == sorted(layers) and not any(n.startswith("model.layers.") for n, _ in got[:3])
        for n, t in got:  # nothing changed: every tensor as read, in its dtype
            assert torch.equal(t, ck.get(n)), n


def test_unknown_and_unwalkable_models_fail_with_one_line(tmp_path):
    folder, _ = build(tmp_path, "llama")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "no-such-model"
    (folder / "config.json").write_text(json.dumps(cfg))
    with (
        open_checkpoint(folder) as ck,
        pytest.raises(SurgeonError, match="does not know model_type 'no-such-model'.*remote code"),
    ):
        LayerwiseModel(ck, torch.device("cpu"))
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    t5.save_pretrained(tmp_path / "t5")
    with open_checkpoint(tmp_path / "t5") as ck, pytest.raises(SurgeonError, match="neither a causal LM nor an encoder"):
        LayerwiseModel(ck, torch.device("cpu"))


def test_memory_follows_one_layer(tmp_path):
    """After a layer is done its parameters are released (meta again): only the outer modules stay loaded."""
    folder, _ = build(tmp_path, "llama")
    with open_checkpoint(folder) as ck:
        lm = LayerwiseModel(ck, torch.device("cpu"))
        assert all(p.is_meta for layer in lm._originals for p in layer.parameters())
        with lm.layer(1) as layer:
            assert not any(p.is_meta for p in layer.parameters())
            assert all(p.is_meta for p in lm._originals[0].parameters())
        assert all(p.is_meta for p in lm._originals[1].parameters())
