"""The ``quantize_embeddings`` pass: weight-only int8 token embeddings, one scale per row.

Embedding lookups are not quantization sites (no activation to quantize, no matmul), so
recipes keep them float by default. In a small LLM the table is a large share of the model:
SmolLM2-135M's 49152 x 576 table is 113 MB of its 543 MB in float32, and it is tied to
``lm_head``. This pass stores it as int8 and dequantizes only the rows a batch looks up::

    rows = embedding(W_q, ids)          # [..., D] int8 (W_q: [V, D])
    s    = embedding(s_w, ids)          # [..., 1] the looked-up rows' scales
    z    = embedding(z_w, ids)          # [..., 1] their zero points
    h    = dequantize(rows, s, z)       # qpass.ops: ONNX DequantizeLinear semantics

In ONNX that is a Gather on the int8 initializer and a per-row DequantizeLinear: no per-run
work on the whole table. The scales come from the observer (minmax by default) over each row,
exactly as ``qpass.convert.weights`` quantizes a weight per output channel. For a tied table,
quantize ``lm_head`` too (e.g. a ``Rules`` policy giving it int8 weights) so that nothing reads
the float table any more and convert drops it. The pass needs no data; it runs in the weights
stage, so calibration already sees the int8 embeddings.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx

from qpass import ops
from qpass.capture.fqn import describe, op_fqn
from qpass.config import PerChannel, QuantSpec
from qpass.convert.convert import _Builder
from qpass.convert.weights import quantize_weight
from qpass.passes import PASSES, Pass, PassContext, PassResult
from qpass.quantizable import fetch_attr

log = logging.getLogger(__name__)
aten = torch.ops.aten


@PASSES.register("quantize_embeddings")
@dataclass(frozen=True)
class QuantizeEmbeddings(Pass):
    """``modules``: module-FQN globs of the embeddings to quantize (all by default).
    ``symmetric``: zero point 0 (else one zero point per row). ``observer``: how each row's
    range is chosen (a registered observer name)."""

    modules: tuple[str, ...] = ("*",)
    symmetric: bool = True
    observer: str = "minmax"

    stage: ClassVar[str] = "weights"
    needs_data: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.modules, str) or not self.modules or not all(
                isinstance(p, str) and p for p in self.modules):
            raise ValueError(f"QuantizeEmbeddings.modules={self.modules!r} is not valid; "
                             "allowed: a non-empty tuple of module-FQN globs, e.g. ('*embed*',)")

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec("int8", symmetric=self.symmetric, granularity=PerChannel(0),
                         observer=self.observer)

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        done = []
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target is not aten.embedding.default:
                continue
            table = node.args[0]
            fqn = op_fqn(node, table)
            if table.op != "get_attr" or not any(fnmatch.fnmatchcase(fqn, p)
                                                 for p in self.modules):
                continue
            done.append(_rewrite(gm, node, self.spec, fqn))
        if not done:
            log.warning("qpass quantize_embeddings: no embedding lookup of a stored table "
                        "matched modules=%r", self.modules)
        return PassResult(gm, bool(done), {"embeddings": done})


def _rewrite(gm: fx.GraphModule, node: fx.Node, spec: QuantSpec, fqn: str) -> dict:
    table = node.args[0]
    w = fetch_attr(gm, str(table.target)).detach()  # [V, D]
    try:
        qw = quantize_weight(w, spec)  # per row of [V, D]: stored [D, V], scale [V]
    except ValueError as exc:
        raise ValueError(f"cannot quantize the embedding table of {describe(node)}: "
                         f"{exc}") from exc
    tensors = {"weight_q": qw.q.T.contiguous(), "weight_scale": qw.scale.reshape(-1, 1),
               "weight_zero_point": qw.zero_point.reshape(-1, 1)}
    b = _Builder(gm)
    with gm.graph.inserting_before(node):
        looked_up = [b.call(aten.embedding.default,
                            (b.buffer(f"{fqn or node.name}.{suffix}", t), *node.args[1:]), node)
                     for suffix, t in tensors.items()]
        h = b.call(ops.DEQUANTIZE, (*looked_up, -1, "int8"), node)
    h.meta.update({k: v for k, v in node.meta.items() if k not in h.meta})
    node.replace_all_uses_with(h)
    gm.graph.erase_node(node)
    target = str(table.target)
    if not table.users:
        gm.graph.erase_node(table)
    tied = any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes)
    if not tied:
        owner, _, attr = target.rpartition(".")
        delattr(gm.get_submodule(owner) if owner else gm, attr)
    log.info("qpass quantize_embeddings: %s (%d x %d) stored as int8%s", fqn or node.name,
             *w.shape, "; the float table stays for its other readers" if tied else "")
    return {"fqn": fqn, "rows": int(w.shape[0]), "dim": int(w.shape[1]), "format": "int8",
            "float_table_kept": tied}

