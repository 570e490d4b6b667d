from qpass.export.onnx_export import export_onnx

__all__ = ["export_onnx"]
