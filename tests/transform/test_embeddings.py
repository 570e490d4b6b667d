"""The quantize_embeddings pass: int8 rows looked up and dequantized, the float table gone."""

import numpy as np
import pytest
import torch

import qpass
from qpass import numerics, ops
from qpass.eval.ort import ort_session
from qpass.policies import Rule, Rules
from qpass.save import load, save
from tests.toy_models import tiny_lm, token_batches

aten = torch.ops.aten


def _tied_lm():
    model = tiny_lm()
    model.lm_head.weight = model.embed.weight  # as SmolLM2 ties them
    return model


def _recipe(**kw) -> qpass.Recipe:
    base = qpass.resolve_recipe("w8a16")
    return base.replace(name="w8a16_int8_embeddings", passes=(qpass.QuantizeEmbeddings(**kw),),
                        policies=(Rules((Rule("lm_head", base.precision),)),))


def _per_row_ref(w: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """float64 reference of int8 fake quantization with one scale per row of ``w``."""
    w = w.double()
    if symmetric:
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        return torch.clamp(torch.round(w / scale), -128, 127) * scale
    lo = torch.clamp(w.amin(dim=1, keepdim=True), max=0)
    hi = torch.clamp(w.amax(dim=1, keepdim=True), min=0)
    scale = (hi - lo) / 255
    zp = torch.clamp(-128 - torch.round(lo / scale), -128, 127)
    return (torch.clamp(torch.round(w / scale) + zp, -128, 127) - zp) * scale


def _reference(model, ids, symmetric=True):
    """The tied model with its table, up and down fake-quantized per row in float64."""
    table = _per_row_ref(model.embed.weight, symmetric)
    h = table[ids]
    up = h @ _per_row_ref(model.up.weight).T + model.up.bias.double()
    h = h + torch.relu(up) @ _per_row_ref(model.down.weight).T
    return h @ _per_row_ref(model.embed.weight).T  # lm_head: int8 per output channel


@pytest.mark.parametrize("symmetric", [True, False])
def test_int8_embedding_matches_a_float64_reference(symmetric):
    model, ids = _tied_lm(), token_batches(1)[0]
    q = qpass.quantize(model, _recipe(symmetric=symmetric), [], (ids,), progress=False)
    # graph: the lookups read int8 rows; no float table is left in the model
    lookups = [n for n in q.graph.nodes if n.target is aten.embedding.default]
    tables = [q.get_buffer(str(n.args[0].target)) for n in lookups]
    assert [t.dtype for t in tables] == [torch.int8, torch.float32, torch.int8]
    assert tables[0].shape == (50, 32) and tables[1].shape == (50, 1)
    assert all(n.users.keys() <= {*(u for u in q.graph.nodes if u.target is ops.DEQUANTIZE)}
               for n in lookups)
    floats = [n for n, t in [*q.named_parameters(remove_duplicate=False),
                             *q.named_buffers(remove_duplicate=False)]
              if t.is_floating_point() and t.numel() >= 50 * 32]
    assert floats == []
    # numbers
    with torch.no_grad():
        out, ref = q(ids).double(), _reference(model, ids, symmetric)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
    assert not torch.allclose(out, model(ids).double(), atol=1e-4)  # it did quantize
    report = q.meta["qpass"].reports["passes"]["quantize_embeddings"]
    assert report["embeddings"] == [{"fqn": "embed", "rows": 50, "dim": 32, "format": "int8",
                                     "float_table_kept": True}]  # until convert took lm_head


def test_untied_table_is_dropped_by_the_pass_and_lm_head_may_stay_float():
    model, ids = tiny_lm(), token_batches(1)[0]
    recipe = qpass.resolve_recipe("w8a16").replace(
        name="emb", passes=(qpass.QuantizeEmbeddings(modules=("embed",)),))
    prepared = qpass.prepare(model, recipe, (ids,))
    assert not hasattr(prepared.embed, "weight")
    q = qpass.convert(prepared)
    assert q.lm_head.weight.dtype == torch.float32  # keep_float still holds for lm_head
    table = _per_row_ref(model.embed.weight)
    with torch.no_grad():
        emb = [n for n in q.graph.nodes if n.target is ops.DEQUANTIZE][0]
        assert emb.args[0].target is aten.embedding.default
        out = torch.fx.Interpreter(q).run(ids)
        up = table[ids] @ _per_row_ref(model.up.weight).T + model.up.bias.double()
        h = table[ids] + torch.relu(up) @ _per_row_ref(model.down.weight).T
        ref = h @ model.lm_head.weight.double().T
    assert torch.allclose(out.double(), ref, atol=1e-4)


def test_onnx_gathers_int8_rows_and_matches_torch(tmp_path):
    model, ids = _tied_lm(), token_batches(1)[0]
    q = qpass.quantize(model, _recipe(), [], (ids,), progress=False)
    path = qpass.export_onnx(q, (ids,), tmp_path / "m.onnx")
    import onnx

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    assert {inits[n.input[0]].data_type for n in gathers} >= {onnx.TensorProto.INT8}
    assert not any(i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= 50 * 32
                   for i in proto.graph.initializer)
    sess = ort_session(path)
    for x in token_batches(3, seed=5):
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        want = q(x).detach().numpy()
        assert np.abs(got - want).max() <= 1e-4


def test_save_load_round_trip(tmp_path):
    model, ids = _tied_lm(), token_batches(1)[0]
    q = qpass.quantize(model, _recipe(), [], (ids,), progress=False)
    save(q, tmp_path / "m")
    back = load(tmp_path / "m")
    for x in token_batches(2, seed=3):
        assert torch.equal(q(x), back(x))


def test_bad_config_and_no_match():
    with pytest.raises(ValueError, match=r"QuantizeEmbeddings.modules=\(\).*module-FQN globs"):
        qpass.QuantizeEmbeddings(modules=())
    with pytest.raises(ValueError, match=r"QuantizeEmbeddings.modules='embed'"):
        qpass.QuantizeEmbeddings(modules="embed")
    with pytest.raises(KeyError, match="unknown observer 'nope'"):
        qpass.quantize(tiny_lm(), _recipe(observer="nope"), [], (token_batches(1)[0],),
                       progress=False)


def test_glob_matching_no_embedding_warns(caplog):
    ids = token_batches(1)[0]
    recipe = qpass.resolve_recipe("w8a16").replace(
        name="emb", passes=(qpass.QuantizeEmbeddings(modules=("*wte*",)),))
    with caplog.at_level("WARNING", logger="qpass"):
        q = qpass.quantize(tiny_lm(), recipe, [], (ids,), progress=False)
    assert "no embedding lookup of a stored table matched modules=('*wte*',)" in caplog.text
    assert q.embed.weight.dtype == torch.float32


def test_int8_rows_equal_numerics_quantize():
    """The stored rows are exactly what qpass.numerics rounds the table to."""
    model, ids = _tied_lm(), token_batches(1)[0]
    q = qpass.quantize(model, _recipe(), [], (ids,), progress=False)
    w = model.embed.weight.detach()
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    codes = numerics.quantize(w, scale, torch.zeros_like(scale, dtype=torch.int8),
                              numerics.FORMATS["int8"])
    assert torch.equal(q.get_buffer("qpass_embed_weight_q"), codes)


def test_tensorrt_profile_refuses_int8_embeddings_before_exporting(tmp_path):
    ids = token_batches(1)[0]
    q = qpass.quantize(_tied_lm(), _recipe(), [], (ids,), progress=False)
    with pytest.raises(ValueError, match=r"'tensorrt' does not support the int8 embedding tables"
                                         r".*\(embed\).*profile='ort'"):
        qpass.export_onnx(q, (ids,), tmp_path / "m.onnx", profile="tensorrt")
    assert not (tmp_path / "m.onnx").exists()


def test_preset_leaves_no_float_table_in_a_nested_model():
    class Wrapped(torch.nn.Module):  # FQNs become "inner.embed", "inner.lm_head"
        def __init__(self):
            super().__init__()
            self.inner = _tied_lm()

        def forward(self, ids):
            return self.inner(ids)

    model, ids = Wrapped().eval(), token_batches(1)[0]
    q = qpass.quantize(model, "w4a16_g128_int8_embed", [], (ids,), progress=False)
    big = [n for n, t in [*q.named_parameters(remove_duplicate=False),
                          *q.named_buffers(remove_duplicate=False)]
           if t.is_floating_point() and t.numel() >= 50 * 32]
    assert big == []
    precisions = q.meta["qpass"].precisions
    fqns = q.meta["qpass"].fqns
    head = next(p for n, p in precisions.items() if fqns[n] == "inner.lm_head")
    assert head.weight.format == "int8" and head.activation is None
    with torch.no_grad():
        out = q(ids)
    assert torch.isfinite(out).all()
    assert (out - model(ids)).abs().max() < 0.25 * model(ids).abs().max()
