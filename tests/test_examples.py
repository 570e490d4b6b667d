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
