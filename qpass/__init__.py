"""qpass: compiler-style post-training quantization for PyTorch models, LLMs first.

    gm = qpass.capture(model, example_inputs)
    prepared = qpass.prepare(gm, "w8a8_static", example_inputs)
    qpass.calibrate(prepared, batches)
    qmodel = qpass.convert(prepared)
    qpass.export_onnx(qmodel, example_inputs, "exports/model.onnx")
"""

from qpass import observe as _observe  # noqa: F401  (registers built-in observers)
from qpass import policies as _policies  # noqa: F401  (registers built-in policies)
from qpass import transform as _transform  # noqa: F401  (registers built-in passes)
from qpass.calibrate import CalibrationDataError, calibrate
from qpass.capture import CaptureError, capture
from qpass.config import (
    LayerPrecision,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    QuantSpec,
    Recipe,
)
from qpass.convert import convert
from qpass.lower import lower
from qpass.observe.module import NonFiniteActivationError
from qpass.pipeline import quantize
from qpass.policies import precision_report
from qpass.prepare import prepare
from qpass.recipes import RECIPES, resolve_recipe
from qpass.transform.awq import AWQ
from qpass.transform.embeddings import QuantizeEmbeddings
from qpass.transform.gptq import GPTQ
from qpass.transform.hadamard import HadamardRotate
from qpass.transform.smoothquant import SmoothQuant

__version__ = "0.1.0"

__all__ = [
    "AWQ", "GPTQ", "RECIPES", "CalibrationDataError", "CaptureError", "HadamardRotate",
    "LayerPrecision", "NonFiniteActivationError", "PerChannel", "PerGroup", "PerTensor",
    "PerToken", "QuantSpec", "QuantizeEmbeddings", "Recipe", "SmoothQuant", "calibrate",
    "capture", "convert", "lower",
    "precision_report", "prepare", "quantize", "resolve_recipe", "__version__",
]


def __getattr__(name: str):  # heavy, optional parts load on first use
    if name == "export_onnx":
        from qpass.export import export_onnx

        return export_onnx
    if name == "eval":
        import importlib

        return importlib.import_module("qpass.eval")
    raise AttributeError(f"module 'qpass' has no attribute {name!r}")
