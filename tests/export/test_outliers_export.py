"""LLM.int8() split in ONNX: static as two MatMuls plus an Add, dynamic with a run-time column
mask; both run in ONNX Runtime and match the torch reference."""

import collections

import numpy as np
import onnx
import pytest
import torch

import qpass
from qpass.eval.ort import ort_session
from qpass.policies import LlmInt8
from tests.toy_models import tiny_lm, token_batches


def _model():
    model = tiny_lm()
    with torch.no_grad():
        model.embed.weight[:, 4] = 25.0
        model.embed.weight[::3, 9] = -40.0  # column 9 is an outlier for some tokens only
    return model


@pytest.mark.parametrize("profile", ["ort", "plain"])
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_llm_int8_exports_and_matches_the_torch_reference(tmp_path, mode, profile):
    batches = token_batches(3)
    recipe = qpass.resolve_recipe("w8a8_dynamic").replace(policies=(LlmInt8(mode=mode),))
    q = qpass.quantize(_model(), recipe, batches, (batches[0],), progress=False)
    path = qpass.export_onnx(q, (batches[0],), tmp_path / f"{mode}.onnx", profile=profile)
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    matmuls = ops["MatMul"] + ops["MatMulIntegerToFloat"] + ops["Gemm"]
    assert matmuls == 2 * 2 + 1  # up and down: an int8 and a float MatMul each; lm_head
    assert ops["Add"] >= 2
    if mode == "static":
        assert ops["Gather"] == 1 + 2  # the embedding; x[..., outlier columns] of up and down
    else:
        assert ops["ReduceMax"] >= 2 and ops["Greater"] == 2 and ops["Where"] >= 2
    if profile == "ort":
        assert ops["MatMulIntegerToFloat"] == 2  # the int8 parts run on exact U8U8 kernels
    session = ort_session(path, threads=1)
    for ids in token_batches(3, seed=7):
        got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
        want = q(ids).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("profile", ["ort", "plain"])
def test_static_split_with_static_activations_exports_and_matches_the_torch_reference(
        tmp_path, profile):
    batches = token_batches(3)
    static = qpass.resolve_recipe("w8a8_static")
    recipe = static.replace(policies=(LlmInt8(precision=static.precision),))
    q = qpass.quantize(_model(), recipe, batches, (batches[0],), progress=False)
    path = qpass.export_onnx(q, (batches[0],), tmp_path / "split_static.onnx", profile=profile)
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["QuantizeLinear"] == 2  # one static per-tensor pair per observer (up, down)
    assert ops["Gather"] == 1 + 2 and ops["Mul"] >= 2  # x[..., outliers]; x * keep
    session = ort_session(path, threads=1)
    for ids in token_batches(3, seed=7):
        got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
        want = q(ids).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
