from qpass.convert.convert import convert
from qpass.convert.weights import QuantizedWeight, quantize_weight

__all__ = ["QuantizedWeight", "convert", "quantize_weight"]
