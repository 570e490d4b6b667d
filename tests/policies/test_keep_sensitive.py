"""keep_sensitive: tied embeddings, the output head (found from the graph) and named layers."""

import pytest
import torch

import qpass
from qpass.policies import KeepSensitive
from tests.toy_models import TinyLM, token_batches


class TiedHead(TinyLM):
    """A head named ``proj`` (no name hint) whose weight is the embedding's, as in SmolLM2."""

    def __init__(self) -> None:
        super().__init__()
        del self.lm_head
        self.proj = torch.nn.Linear(32, 50, bias=False)
        self.proj.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.down(torch.relu(self.up(h)))
        return self.proj(h)


class Head(TinyLM):
    """An untied head named ``out``: found because its output is the graph's output."""

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.down(torch.relu(self.up(h)))
        return self.lm_head(h).reshape(-1, 50)


def _precisions(model, policy):
    recipe = qpass.resolve_recipe("w8a8_dynamic").replace(keep_float=(), policies=(policy,))
    ids = token_batches(1)[0]
    state = qpass.prepare(model.eval(), recipe, (ids,)).meta["qpass"]
    return {state.fqns[n]: p for n, p in state.precisions.items()}


def test_tied_embedding_head_stays_float_without_a_name_hint():
    torch.manual_seed(0)
    precs = _precisions(TiedHead(), KeepSensitive(head=False))
    assert precs["proj"].is_float and "embedding" in precs["proj"].reason
    assert not precs["up"].is_float and not precs["down"].is_float


def test_head_found_from_the_graph_output_and_named_layers():
    torch.manual_seed(0)
    precs = _precisions(Head(), KeepSensitive(layers=("up",)))
    assert precs["lm_head"].is_float and "output head" in precs["lm_head"].reason
    assert precs["up"].is_float and "'up'" in precs["up"].reason
    assert not precs["down"].is_float
    precs = _precisions(Head(), KeepSensitive(head=False))
    assert not precs["lm_head"].is_float


def test_keep_sensitive_bad_input():
    with pytest.raises(ValueError, match=r"KeepSensitive.layers='up'.*tuple of module-FQN globs"):
        KeepSensitive(layers="up")
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"layers pattern 'nope\*' matched no quantizable op"):
        _precisions(Head(), KeepSensitive(layers=("nope*",)))


@pytest.mark.real
def test_smollm2_tied_head_is_the_only_float_layer(smollm2):
    recipe = qpass.resolve_recipe("w8a16").replace(keep_float=(), policies=(KeepSensitive(),))
    prepared = qpass.prepare(smollm2.module, recipe, smollm2.example_inputs)
    rows = qpass.precision_report(prepared)
    assert len(rows) == 211
    floats = [r for r in rows if r["float"]]
    assert [r["fqn"] for r in floats] == ["model.lm_head"]
    assert floats[0]["reason"] == "keep_sensitive: an embedding (or tied to one)"
