"""Bad input to export_onnx: an op ONNX cannot express inside a quantized region, an output
path that cannot be written, a write that fails half-way."""

import pytest
import torch

import qpass
from qpass.export import onnx_export
from tests.toy_models import tiny_lm, token_batches


@torch.library.custom_op("qpass_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(8, 8)
        self.down = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.down(mystery(self.up(x)))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.block(x))


def _quantized(recipe="w8a16"):
    torch.manual_seed(0)
    x = torch.randn(2, 8)
    return qpass.quantize(Net().eval(), recipe, [], (x,), progress=False), x


def test_unsupported_op_in_a_quantized_region_names_op_module_and_a_rule(tmp_path):
    q, x = _quantized()
    with pytest.raises(RuntimeError, match=r"could not export op qpass_test::mystery at "
                       r"%mystery .*\[module block\]") as info:
        qpass.export_onnx(q, (x,), tmp_path / "m.onnx")
    message = str(info.value)
    assert "quantized region (module 'block' holds quantized layers block.up, block.down)" in (
        message)
    assert "Rules((Rule('block.*', precision=LayerPrecision()),))" in message
    assert "keep_float" in message
    assert not (tmp_path / "m.onnx").exists()


def test_output_path_that_cannot_be_written(tmp_path):
    q, x = _quantized()
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(OSError, match=r"cannot create the folder .*a_file.* choose a writable"):
        qpass.export_onnx(q, (x,), tmp_path / "a_file" / "m.onnx")
    with pytest.raises(IsADirectoryError, match="is a directory; pass a file path"):
        qpass.export_onnx(q, (x,), tmp_path)


def test_a_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    x = token_batches(1)[0]
    q = qpass.quantize(tiny_lm(), "w8a16", [], (x,), progress=False)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the previous export")

    def disk_full(model, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(model.SerializeToString()[:100])  # half a model, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export.onnx, "save_model", disk_full)
    with pytest.raises(OSError, match=r"could not write the ONNX model to .*m.onnx.*No space "
                       r"left on device; nothing was left behind"):
        qpass.export_onnx(q, (x,), target)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert target.read_bytes() == b"the previous export"  # the old file is untouched
