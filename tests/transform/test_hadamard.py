"""The Hadamard rotation pass keeps the float function and lowers the static int8 error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qpass
from qpass.eval.ort import ort_session
from qpass.transform.hadamard import hadamard, rotate_columns


class HeavyTailed(nn.Module):
    """x -> lin: whose input has, per token, one channel far larger than the rest (a
    different one each token, so no per-channel scale can take it out)."""

    def __init__(self, k: int = 256, n: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(k, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _heavy(n=4, t=32, k=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(1, t, k, generator=g) * 0.1
        idx = torch.randint(0, k, (t,), generator=g)
        x[0, torch.arange(t), idx] = 40.0 * torch.sign(torch.randn(t, generator=g))
        out.append((x,))
    return out


def test_hadamard_is_orthogonal_and_symmetric():
    for n in (2, 16, 128):
        h = hadamard(n)
        assert torch.equal(h, h.T)
        torch.testing.assert_close(h @ h, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard(12)
    w = torch.randn(8, 64, dtype=torch.float64)
    torch.testing.assert_close(rotate_columns(rotate_columns(w, 16), 16), w)


def _recipe(*passes):
    return qpass.resolve_recipe("w8a8_static").replace(passes=passes)


def test_rotation_keeps_the_float_function_and_cuts_the_static_int8_error():
    model, batches = HeavyTailed().eval(), _heavy()
    rotate = qpass.HadamardRotate(targets=("lin",), block=128)
    prepared = qpass.prepare(model, _recipe(rotate), batches[0], calib_data=batches,
                             progress=False)
    report = prepared.meta["qpass"].reports["passes"]["hadamard"]
    assert [s["rotated"] for s in report["sites"]] == [True]
    x = _heavy(1, seed=5)[0]
    with torch.no_grad():
        want = model(*x)
        torch.testing.assert_close(prepared(*x), want, rtol=1e-5, atol=1e-5)
        errs = [((qpass.quantize(model, _recipe(*p), batches, batches[0], progress=False)(*x)
                  - want).norm() / want.norm()).item() for p in ((), (rotate,))]
    assert errs[1] < errs[0] / 3, errs


def test_rotated_model_exports_and_matches_in_onnxruntime(tmp_path):
    from torch.export import Dim

    model, batches = HeavyTailed().eval(), _heavy()
    dims = ({1: Dim("seq", min=2, max=256)},)
    rotate = qpass.HadamardRotate(targets=("lin",), block=64)
    q = qpass.quantize(model, _recipe(rotate), batches, batches[0], dynamic_shapes=dims,
                       progress=False)
    path = qpass.export_onnx(q, batches[0], tmp_path / "rot.onnx", dynamic_shapes=dims)
    session = ort_session(path, threads=1)
    for t in (5, 32, 70):
        x = _heavy(1, t=t, seed=t)[0][0]
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, q(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_misfits_are_left_alone_and_said_so(caplog):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.odd = nn.Linear(24, 8)

        def forward(self, x):
            return self.odd(x)

    x = (torch.randn(1, 4, 24),)
    with pytest.warns(UserWarning, match="'nothing' matches no quantized linear"):
        prepared = qpass.prepare(Odd().eval(), _recipe(qpass.HadamardRotate(
            targets=("odd", "nothing"), block=16)), x, calib_data=[x], progress=False)
    site = prepared.meta["qpass"].reports["passes"]["hadamard"]["sites"][0]
    assert not site["rotated"] and "24 input features" in site["reason"]


@pytest.mark.parametrize("bad, match", [
    ({"block": 96}, "block=96"), ({"block": 1}, "block=1"), ({"targets": "lin"}, "targets"),
    ({"targets": ()}, "targets")])
def test_invalid_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        qpass.HadamardRotate(**bad)


def test_fold_is_exact_after_smoothquant_on_a_llama():
    pytest.importorskip("transformers")
    from tests.transform.test_smoothquant import _batches, _rel
    from tests.transform.toy_models import tiny_llama

    model, batches = tiny_llama(outlier=30.0), _batches()
    recipe = _recipe(qpass.SmoothQuant(0.8), qpass.HadamardRotate(block=64))
    prepared = qpass.prepare(model, recipe, batches[0], calib_data=batches, progress=False)
    passes = prepared.meta["qpass"].reports["passes"]
    assert [s["rotated"] for s in passes["hadamard"]["sites"]] == [True, True]
    assert "linear" in {g["fold"] for g in passes["smoothquant"]["groups"]}  # up -> down kept
    x = _batches(1, seed=7)[0]
    with torch.no_grad():
        assert _rel(prepared(*x), model(*x)) <= 1e-5


def test_recipe_with_the_rotation_round_trips():
    recipe = _recipe(qpass.SmoothQuant(0.8), qpass.HadamardRotate(("*mlp.down_proj",), 64))
    assert qpass.Recipe.from_dict(recipe.to_dict()) == recipe


def test_block_rotate_has_the_gradient_of_its_matmul():
    # the sensitivity policy backpropagates through rotated graphs
    from qpass.ops import block_rotate

    x = torch.randn(3, 5, 32, dtype=torch.float64, requires_grad=True)
    h = torch.randn(8, 8, dtype=torch.float64)
    torch.autograd.gradcheck(lambda t: block_rotate(t, h), (x,))
    want = (x.detach().unflatten(-1, (4, 8)) @ h).flatten(-2)
    torch.testing.assert_close(block_rotate(x, h), want)


def test_the_rotated_static_preset_beats_plain_static_on_a_llama():
    pytest.importorskip("transformers")
    from tests.transform.test_smoothquant import _batches, _error
    from tests.transform.toy_models import tiny_llama

    model, batches, held = tiny_llama(outlier=60.0), _batches(), _batches(3, seed=9)
    rotated = qpass.resolve_recipe("w8a8_static_rotated")
    prepared = qpass.prepare(model, rotated, batches[0], calib_data=batches, progress=False)
    sites = prepared.meta["qpass"].reports["passes"]["hadamard"]["sites"]
    assert [s["fqn"] for s in sites if s["rotated"]] == [
        f"model.model.layers.{i}.mlp.down_proj" for i in range(2)]
    e_rotated = _error(rotated, model, batches, held)
    e_static = _error(qpass.resolve_recipe("w8a8_static"), model, batches, held)
    assert e_rotated < 0.5 * e_static, (e_rotated, e_static)
