"""A torch.fx graph as plain JSON, and back: the graph half of ``qpass.save`` (no pickle).

Every node keeps its name, op, target, args, kwargs and module stack. Targets are written
as names and resolved on load against a closed set of namespaces, never imported by path:

- ``op:aten::add.Tensor`` -> ``torch.ops.aten.add.Tensor`` (any registered op namespace,
  ``qpass::quantize`` included; ``import qpass`` registers qpass's own);
- ``hop:wrap_with_set_grad_enabled`` -> ``torch.ops.higher_order.<name>``;
- ``py:operator.getitem`` -> a function of the ``operator`` or ``math`` module.

Arguments are JSON values, with tagged objects for what JSON lacks (tuples, dtypes, devices,
layouts, memory formats, slices, non-finite floats, references to other nodes). Tensors are
not written here: ``get_attr`` nodes name them, and the caller stores them (safetensors).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import treespec_dumps, treespec_loads

GRAPH_FORMAT = 1
_PY_MODULES = {"operator": operator, "_operator": operator, "math": math}
_ENUMS = {"layout": (torch.layout, ("strided", "sparse_coo", "sparse_csr", "_mkldnn")),
          "memory_format": (torch.memory_format, ("contiguous_format", "channels_last",
                                                  "channels_last_3d", "preserve_format"))}


class GraphFormatError(ValueError):
    """A graph holds something qpass cannot write as JSON, or a file describes one it
    cannot rebuild."""


def target_to_str(target: Any, where: str) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"op:{target.name()}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"hop:{target.name()}"
    module = getattr(target, "__module__", None)
    name = getattr(target, "__name__", None)
    if module in _PY_MODULES and name and getattr(_PY_MODULES[module], name, None) is target:
        return f"py:{module.lstrip('_')}.{name}"
    raise GraphFormatError(
        f"cannot save {where}: its target {target!r} is not an ATen/registered op, a higher-order "
        "op or an operator/math function. qpass saves graphs of torch.export-captured models; "
        "re-capture the model with qpass.capture (torch.export) before quantizing")


def str_to_target(text: str, where: str) -> Any:
    kind, _, name = text.partition(":")
    try:
        if kind == "op":
            qualified, _, overload = name.partition(".")
            namespace, _, op = qualified.partition("::")
            return getattr(getattr(getattr(torch.ops, namespace), op), overload or "default")
        if kind == "hop":
            return getattr(torch.ops.higher_order, name)
        if kind == "py":
            module, _, fn = name.rpartition(".")
            return getattr(_PY_MODULES[module], fn)
    except (AttributeError, KeyError, RuntimeError) as exc:
        raise GraphFormatError(
            f"{where}: target {text!r} does not exist in this torch ({torch.__version__}); "
            "was the model saved with another torch version, or with ops of a package that is "
            "not imported? Import the package that registers the op before qpass.load") from exc
    raise GraphFormatError(f"{where}: target {text!r} has an unknown kind {kind!r}; "
                           "expected op:, hop: or py:")


def encode_arg(a: Any, where: str) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if a is None or isinstance(a, bool | int | str):
        return a
    if isinstance(a, float):
        return a if math.isfinite(a) else {"float": repr(a)}
    if isinstance(a, list):
        return [encode_arg(x, where) for x in a]
    if isinstance(a, tuple):
        return {"tuple": [encode_arg(x, where) for x in a]}
    if isinstance(a, dict):
        return {"dict": [[encode_arg(k, where), encode_arg(v, where)] for k, v in a.items()]}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).removeprefix("torch.")}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    for tag, (cls, _names) in _ENUMS.items():
        if isinstance(a, cls):
            return {tag: str(a).removeprefix("torch.")}
    if isinstance(a, slice):
        return {"slice": [encode_arg(x, where) for x in (a.start, a.stop, a.step)]}
    if a is Ellipsis:
        return {"ellipsis": True}
    raise GraphFormatError(f"cannot save {where}: argument {a!r} of type {type(a).__name__} has "
                           "no JSON form in qpass's graph format")


def decode_arg(a: Any, nodes: dict[str, fx.Node], where: str) -> Any:
    if isinstance(a, list):
        return [decode_arg(x, nodes, where) for x in a]
    if not isinstance(a, dict):
        return a
    (tag, v), = a.items()
    if tag == "node":
        return nodes[v]
    if tag == "tuple":
        return tuple(decode_arg(x, nodes, where) for x in v)
    if tag == "dict":
        return {decode_arg(k, nodes, where): decode_arg(x, nodes, where) for k, x in v}
    if tag == "float":
        return float(v)
    if tag == "dtype" and isinstance(getattr(torch, v, None), torch.dtype):
        return getattr(torch, v)
    if tag == "device":
        return torch.device(v)
    if tag in _ENUMS and v in _ENUMS[tag][1]:
        return getattr(torch, v)
    if tag == "slice":
        return slice(*(decode_arg(x, nodes, where) for x in v))
    if tag == "ellipsis":
        return Ellipsis
    raise GraphFormatError(f"{where}: cannot read argument {a!r}; the file is damaged or was "
                           "written by a newer qpass")


def _module_stack(node: fx.Node) -> list[list[str]] | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return [[str(k), str(path), getattr(t, "__qualname__", str(t))]
            for k, (path, t) in stack.items()]


def graph_to_json(gm: fx.GraphModule, skip: set[str] = frozenset()) -> dict[str, Any]:
    """The graph of ``gm`` as plain data. Nodes named in ``skip`` (unused ones only) are left
    out; tensors and submodules are referred to by their dotted attribute names."""
    nodes = []
    for n in gm.graph.nodes:
        if n.name in skip:
            if n.users:
                raise GraphFormatError(f"cannot leave out node {n.format_node()}: it is used")
            continue
        where = f"node {n.format_node()}"
        target = n.target if n.op in ("placeholder", "get_attr", "call_module", "output",
                                      "call_method") else target_to_str(n.target, where)
        nodes.append({"name": n.name, "op": n.op, "target": target,
                      "args": encode_arg(n.args, where), "kwargs": encode_arg(n.kwargs, where),
                      "module_stack": _module_stack(n)})
    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    pytree = None if info is None else {
        "orig_args": list(info.orig_args),
        "in_spec": info.in_spec and treespec_dumps(info.in_spec),
        "out_spec": info.out_spec and treespec_dumps(info.out_spec)}
    return {"format": GRAPH_FORMAT, "nodes": nodes, "pytree": pytree}


def json_to_graph(data: dict[str, Any], where: str = "graph") -> fx.Graph:
    """The inverse of ``graph_to_json``: a fresh fx.Graph (attach it to a module that holds the
    tensors and submodules its get_attr / call_module nodes name)."""
    if data.get("format") != GRAPH_FORMAT:
        raise GraphFormatError(f"{where}: graph format {data.get('format')!r} is not "
                               f"{GRAPH_FORMAT}; the file was written by another qpass version")
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for d in data["nodes"]:
        at = f"{where}, node {d['name']!r}"
        target = d["target"] if d["op"] in ("placeholder", "get_attr", "call_module", "output",
                                            "call_method") else str_to_target(d["target"], at)
        args = decode_arg(d["args"], nodes, at)
        kwargs = decode_arg(d["kwargs"], nodes, at)
        node = graph.create_node(d["op"], target, tuple(args), dict(kwargs), name=d["name"])
        if node.name != d["name"]:
            raise GraphFormatError(f"{at}: the name is taken twice; the file is damaged")
        if d.get("module_stack"):
            node.meta["nn_module_stack"] = {k: (path, t) for k, path, t in d["module_stack"]}
        nodes[node.name] = node
    pytree = data.get("pytree")
    if pytree is not None:
        from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

        def load(s: str | None) -> Any:
            return None if s is None else treespec_loads(s)

        graph._codegen = _PyTreeCodeGen(_PyTreeInfo(
            pytree["orig_args"], load(pytree["in_spec"]), load(pytree["out_spec"])))
    graph.lint()
    return graph
