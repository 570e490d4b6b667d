import copy

import torch

import qpass
from qpass import ops
from qpass.export.ort_lowering import fuse_dynamic_matmuls
from tests.toy_models import Functional, tiny_lm, token_batches


def test_dynamic_matmuls_fuse_without_changing_the_numbers():
    ids = token_batches(1)[0]
    q = qpass.quantize(tiny_lm(), "w8a8_dynamic", [], (ids,), progress=False)
    lowered = copy.deepcopy(q)
    assert fuse_dynamic_matmuls(lowered) == 2
    targets = [n.target for n in lowered.graph.nodes if n.op == "call_function"]
    assert targets.count(ops.DYNAMIC_QUANT_MATMUL) == 2
    assert ops.CHOOSE_QPARAMS_PER_TOKEN not in targets and ops.QUANTIZE not in targets
    u8 = [n for n, b in lowered.named_buffers() if b.dtype == torch.uint8]
    assert sorted(u8) == ["qpass_down_weight_q_u8", "qpass_down_weight_zero_point_u8",
                          "qpass_up_weight_q_u8", "qpass_up_weight_zero_point_u8"]
    torch.testing.assert_close(lowered(ids), q(ids), rtol=1e-5, atol=1e-5)


def test_static_and_weight_only_graphs_are_left_alone():
    ids = token_batches(1)[0]
    for recipe in ("w8a16", "w8a8_static"):
        q = qpass.quantize(tiny_lm(), recipe, token_batches(2), (ids,), progress=False)
        assert fuse_dynamic_matmuls(copy.deepcopy(q)) == 0


def test_mm_sites_fuse_too():
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    q = qpass.quantize(Functional(), "w8a8_dynamic", [], (x,), progress=False)
    lowered = copy.deepcopy(q)
    assert fuse_dynamic_matmuls(lowered) == 3  # linear->matmul, mm, matmul; addmm keeps Q/DQ
    torch.testing.assert_close(lowered(x), q(x), rtol=1e-5, atol=1e-5)
