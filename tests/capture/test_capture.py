import pytest
import torch

import qpass
from qpass.capture import module_fqn
from qpass.quantizable import find_sites
from tests.toy_models import DataDependent, Functional, tiny_lm, token_batches


@pytest.mark.parametrize("method", ["export", "symbolic_trace", "auto"])
def test_capture_matches_the_eager_model_and_knows_fqns(method):
    model = tiny_lm()
    ids = token_batches(1)[0]
    gm = qpass.capture(model, (ids,), method=method)
    assert isinstance(gm, torch.fx.GraphModule)
    torch.testing.assert_close(gm(ids), model(ids), rtol=0, atol=0)
    fqns = sorted(s.fqn for s in find_sites(gm))
    assert fqns == ["down", "lm_head", "up"]


@pytest.mark.parametrize("method", ["export", "symbolic_trace"])
def test_functional_weighted_ops_are_found_in_both_capture_methods(method):
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(5, 8)
    gm = qpass.capture(model, (x,), method=method)
    torch.testing.assert_close(gm(x), model(x))
    targets = [str(s.node.target) for s in find_sites(gm)]
    assert targets == ["aten.linear.default", "aten.mm.default", "aten.addmm.default",
                       "aten.matmul.default"]
    # parameters of the root itself have the root's empty FQN
    assert all(s.fqn == "" for s in find_sites(gm))


def test_export_nodes_carry_module_stack():
    gm = qpass.capture(tiny_lm(), (token_batches(1)[0],), method="export")
    linears = [n for n in gm.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert [module_fqn(n) for n in linears] == ["up", "down", "lm_head"]


def test_untraceable_model_error_shows_both_causes():
    with pytest.raises(qpass.CaptureError, match=r"(?s)torch\.export.*symbolic_trace.*What to try"):
        qpass.capture(DataDependent(), (torch.randn(2, 4),))


def test_unknown_capture_method_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: auto, export, symbolic_trace"):
        qpass.capture(tiny_lm(), (token_batches(1)[0],), method="jit")
