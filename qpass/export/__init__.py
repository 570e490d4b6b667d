from qpass.export import ort_rules as _ort_rules  # noqa: F401  (registers validator rules)
from qpass.export import qdq_rules as _qdq_rules  # noqa: F401
from qpass.export import tensorrt_profile as _tensorrt_profile  # noqa: F401
from qpass.export import tensorrt_rules as _tensorrt_rules  # noqa: F401
from qpass.export.onnx_export import export_onnx
from qpass.export.profiles import EXPORT_PROFILES, ExportProfile, get_profile
from qpass.export.validate import RULES, ExportValidationError, Violation, check, validate

__all__ = ["EXPORT_PROFILES", "RULES", "ExportProfile", "ExportValidationError", "Violation",
           "check", "export_onnx", "get_profile", "validate"]
