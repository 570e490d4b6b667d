from qpass.capture.capture import CaptureError, as_tuple, capture
from qpass.capture.fqn import module_fqn, op_fqn

__all__ = ["CaptureError", "as_tuple", "capture", "module_fqn", "op_fqn"]
