import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.real
def test_quantize_minilm_example_runs(minilm, tmp_path):
    result = _load("quantize_minilm").main(["--out", str(tmp_path)])
    assert result["path"].exists()
    assert result["vs_float"].mean_cosine > 0.97
    assert result["vs_torch"].mean_cosine > 0.99


@pytest.mark.real
def test_custom_policy_example_keeps_the_widest_inputs_float(minilm):
    out = _load("custom_policy").main(["--keep", "2"])
    assert len(out["kept"]) == 2 and min(out["kept"].values()) > 10
    assert out["w8a8_static_widest_float"] > out["w8a8_static"]


@pytest.mark.real
def test_compare_observers_example_runs(minilm):
    cosine = _load("compare_observers").main(["--observers", "minmax", "mse",
                                              "--calib-windows", "2"])
    assert set(cosine) == {"minmax", "mse"} and all(0.9 < c < 1 for c in cosine.values())


@pytest.mark.real
def test_smoothquant_example_beats_plain_static_int8(smollm2, tmp_path):
    # the export takes minutes on 2 cores; the example's own run covers it (README)
    out = _load("quantize_smollm2_smoothquant").main([
        "--calib-windows", "2", "--eval-windows", "1", "--window", "256", "--no-export"])
    plain = out["results"]["w8a8_static"].candidate_ppl
    smooth = out["results"]["w8a8_static_smoothquant"].candidate_ppl
    assert smooth < plain
