import math

import pytest
import torch
import torch.fx as fx

from qpass.graph_json import GraphFormatError, decode_arg, encode_arg, str_to_target, target_to_str


@pytest.mark.parametrize("value", [
    None, True, 3, -2.5, "x", [1, 2], (1, (2, 3)), {"a": 1}, torch.float8_e4m3fn, torch.int8,
    torch.device("cpu"), torch.strided, torch.contiguous_format, slice(1, None, 2), Ellipsis,
    math.inf, -math.inf])
def test_arguments_round_trip(value):
    back = decode_arg(encode_arg(value, "test"), {}, "test")
    assert back == value and type(back) is type(value)


def test_nan_and_nodes_round_trip():
    assert math.isnan(decode_arg(encode_arg(math.nan, "t"), {}, "t"))
    graph = fx.Graph()
    x = graph.placeholder("x")
    assert decode_arg(encode_arg([x, (x, 1)], "t"), {"x": x}, "t") == [x, (x, 1)]


def test_targets_resolve_by_name_only():
    for op in (torch.ops.aten.add.Tensor, torch.ops.aten.linear.default,
               torch.ops.higher_order.wrap_with_set_grad_enabled):
        assert str_to_target(target_to_str(op, "t"), "t") is op
    import operator

    assert str_to_target(target_to_str(operator.getitem, "t"), "t") is operator.getitem
    with pytest.raises(GraphFormatError, match="target .* is not an ATen/registered op"):
        target_to_str(print, "node p")
    with pytest.raises(GraphFormatError, match="'op:aten::no_such_op.default' does not exist"):
        str_to_target("op:aten::no_such_op.default", "t")
    with pytest.raises(GraphFormatError, match="unknown kind 'os'"):
        str_to_target("os:system", "t")
