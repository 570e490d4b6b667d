import pytest

from qpass.eval.ort import ort_session


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx.*does not exist"):
        ort_session(tmp_path / "nope.onnx")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_threads(tmp_path, threads):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        ort_session(path, threads=threads)


@pytest.mark.parametrize("level", [5, -1, "4"])
def test_bad_nbits_accuracy_level(tmp_path, level):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="nbits_accuracy_level must be one of 0, 1, 2, 3, 4"):
        ort_session(path, nbits_accuracy_level=level)
