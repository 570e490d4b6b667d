"""The whole pipeline on the real models, with no model-specific branch: capture, prepare,
calibrate, convert, export, and ONNX Runtime parity. (The full-size figures of the
acceptance table come from ``python -m qpass.bench smollm2``; these use fewer tokens.)"""

import onnx
import pytest
import torch

import qpass
from qpass.eval import perplexity, wikipedia_token_slices
from qpass.eval.parity import compare
from qpass.eval.similarity import output_similarity

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol_data(smollm2):
    calib, evals = wikipedia_token_slices(smollm2.tokenizer, calib_windows=2, eval_windows=2,
                                          window=256)
    return calib, evals, qpass.capture(smollm2.module, (calib[:1],))


def test_captured_smollm2_has_the_eager_perplexity(smollm2, smol_data):
    _, evals, gm = smol_data
    result = compare(smollm2.module, gm, evals)
    assert result.ppl_rel_diff <= 1e-4, result
    assert result.argmax_agreement == 1.0
    # every linear of the 30 Llama layers knows its module, lm_head stays float
    state = qpass.prepare(gm, "w8a16", (evals[:1],)).meta["qpass"]
    quantized = {state.fqns[n] for n, p in state.precisions.items() if not p.is_float}
    assert len(quantized) == 30 * 7
    assert "model.model.layers.11.mlp.down_proj" in quantized
    assert all(state.fqns[n].endswith("lm_head") for n, p in state.precisions.items()
               if p.is_float)


def test_smollm2_w8a16_exports_and_matches_in_onnxruntime(smollm2, smol_data, tmp_path):
    calib, evals, gm = smol_data
    q = qpass.quantize(gm, "w8a16", [], (calib[:1],), progress=False)
    accuracy = compare(gm, q, evals)
    assert accuracy.candidate_ppl / accuracy.reference_ppl - 1 <= 0.005, accuracy
    path = qpass.export_onnx(q, (calib[:1],), tmp_path / "smollm2-w8a16.onnx")
    proto = onnx.load(path, load_external_data=False)
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) == 210
    parity = compare(q, path, evals)
    assert parity.ppl_rel_diff <= 1e-3, parity
    assert parity.argmax_agreement >= 0.999, parity
    assert perplexity(path, evals) == pytest.approx(parity.candidate_ppl, rel=1e-9)


@pytest.mark.parametrize("recipe", ["w8a8_dynamic", "w8a8_static"])
def test_minilm_runs_the_same_code_path(minilm, tmp_path, recipe):
    calib, evals = wikipedia_token_slices(minilm.tokenizer, calib_windows=4, eval_windows=2,
                                          window=128)
    batches = [(calib[i:i + 1], torch.ones_like(calib[i:i + 1])) for i in range(len(calib))]
    example = batches[0]
    q = qpass.quantize(minilm.module, recipe, batches, example, progress=False)
    eval_batches = [(evals[i:i + 1], torch.ones_like(evals[i:i + 1])) for i in range(2)]
    gm = qpass.capture(minilm.module, example)
    assert output_similarity(gm, q, eval_batches).mean_cosine > 0.97
    path = qpass.export_onnx(q, example, tmp_path / f"minilm-{recipe}.onnx")
    assert output_similarity(q, path, eval_batches).mean_cosine > 0.99
