"""The calibrated methods and `surgeon eval` count decoder layers on their progress bar, the unit that dominates
their time (each layer runs every calibration sequence): one phase per pass over the model, each advanced by one
per layer to exactly its total, and nothing else (the writer's tensors) advancing it."""

from __future__ import annotations

import pytest
from builders import add_byte_level_tokenizer, make_tiny_llama

import modelsurgeon as ms

VOCAB = 300
TEXT = (__import__("pathlib").Path(__file__).resolve().parents[2] / "data" / "pride_and_prejudice.txt").read_text()[:20000]
CAL = {"samples": 4, "seqlen": 32}
LAYERS = 2


class Phases:
    """A Progress that records each phase: [description, total, unit, done]."""

    def __init__(self):
        self.phases: list[list] = []

    def start(self, description, total=None, unit="items"):
        self.phases.append([description, total, unit, 0])

    def advance(self, n=1):
        assert self.phases, "advanced before any phase started"
        self.phases[-1][3] += n

    def note(self, message):
        pass


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("progress") / "tiny", vocab_size=VOCAB)
    add_byte_level_tokenizer(folder, VOCAB, TEXT)
    return folder


def _layer_phases(rec: Phases) -> list[str]:
    for desc, total, unit, done in rec.phases:
        assert (unit, total, done) == ("layers", LAYERS, LAYERS), (desc, total, unit, done)
    return [p[0] for p in rec.phases]


@pytest.mark.parametrize(("method", "owl", "passes"), [("wanda", False, 1), ("wanda", True, 2)])
def test_calibrated_prune_counts_layers(tmp_path, llama, method, owl, passes):
    rec = Phases()
    ms.prune(llama, tmp_path / "o", method=method, sparsity=0.5, owl=owl or None, calib=CAL, progress=rec)
    assert len(_layer_phases(rec)) == passes  # OWL's statistics pass first, then the pruning pass


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_quantize_counts_layers(tmp_path, llama, method):
    rec = Phases()
    ms.quantize(llama, tmp_path / "o", scheme="w4a16", group_size=32, method=method, calib=CAL, progress=rec)
    assert rec.phases and all(method in d for d in _layer_phases(rec))  # no tensors phase, no tensor advancing a layer bar


def test_eval_counts_layers_for_every_model(tmp_path, llama):
    text = tmp_path / "t.txt"
    text.write_text(TEXT[:4000])
    rec = Phases()
    ms.evaluate([str(llama), str(llama)], text=str(text), reference=str(llama), context=64, progress=rec)
    assert len(_layer_phases(rec)) >= 3  # the reference and both models, each one pass over the layers
