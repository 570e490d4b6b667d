"""qpass.lower(backend="cpu") on SmolLM2: every quantized linear becomes one kernel call and
the model keeps the converted model's numbers."""

import pytest
import torch

import qpass
from qpass.eval import perplexity, wikipedia_token_slices


@pytest.fixture(scope="module")
def smol(smollm2):
    calib, evals = wikipedia_token_slices(smollm2.tokenizer, calib_windows=1, eval_windows=1,
                                          window=128)
    return calib, evals, qpass.capture(smollm2.module, (calib[:1],))


@pytest.mark.real
@pytest.mark.parametrize("recipe", ["w8a16", "w8a8_dynamic"])
def test_smollm2_lowered_to_the_references_keeps_the_converted_numbers(smol, recipe):
    calib, evals, gm = smol
    q = qpass.quantize(gm, recipe, [calib[:1]], (calib[:1],), progress=False)
    low = qpass.lower(q, backend="cpu")
    report = low.meta["qpass"].reports["lower"]
    assert sum(report.kernels().values()) == 30 * 7 and "reference Q/DQ" not in report.kernels()
    ids = evals[:1]
    with torch.no_grad():
        y_low, y_conv = low(ids), q(ids)
    if recipe == "w8a16":  # no activation quantization: float32 vs float64 accumulation only
        torch.testing.assert_close(y_low, y_conv, rtol=1e-4, atol=1e-3)
    ppl_low, ppl_conv = perplexity(low, evals, 128), perplexity(q, evals, 128)
    assert abs(ppl_low / ppl_conv - 1) < 1e-3
