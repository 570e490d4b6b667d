from qpass.calibrate.calibrate import CalibrationDataError, calibrate

__all__ = ["CalibrationDataError", "calibrate"]
