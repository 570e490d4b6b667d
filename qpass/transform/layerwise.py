"""Run every calibration batch through a graph together, node by node, stopping at chosen ops.

GPTQ and AWQ change one layer at a time and need the real inputs of each layer as the model
computes them with the earlier layers already changed. ``LayerwiseWalk`` gives exactly that at
the cost of about one forward pass: it evaluates the graph in topological order for all
batches at once (one ``fx.Interpreter`` environment per batch), keeps only live values (each
is freed after its last use) and, when it reaches a watched node, calls back with the node's
inputs over all batches *before* computing it. The callback may rewrite weights in place and
replace live values (AWQ divides a smoothed activation by its scale); the node is then
computed with the new weights, so every later layer sees the changed model.

Memory: the model, plus the live values of one point of the graph for every batch (a few
residual-stream tensors); it does not grow with the number of layers. The walk stops after
the last watched node, so nothing past it (``lm_head``, the loss) is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from tqdm.auto import tqdm


class LayerwiseWalk:
    """Evaluate ``gm`` on ``batches`` (tuples of positional inputs) node by node."""

    def __init__(self, gm: fx.GraphModule, batches: list[tuple[Any, ...]]) -> None:
        if not batches:
            raise ValueError("a layer-wise walk needs at least one calibration batch")
        self.gm = gm
        self.interps = []
        for batch in batches:
            interp = fx.Interpreter(gm, garbage_collect_values=True)
            interp.args_iter = iter(batch)
            self.interps.append(interp)
        self._nodes = list(gm.graph.nodes)
        self._index = {n: i for i, n in enumerate(self._nodes)}
        self._pos = 0  # the next node to compute
        self._last_uses = self.interps[0].user_to_last_uses

    def values(self, node: fx.Node) -> list[Any]:
        """The value of ``node`` in every batch (it must be live: computed, not yet freed)."""
        try:
            return [interp.env[node] for interp in self.interps]
        except KeyError:
            raise ValueError(f"{node.format_node()} has no live value in the layer-wise walk "
                             "(not computed yet, or freed after its last use)") from None

    def peek(self, node: fx.Node) -> list[Any]:
        """The value of ``node`` in every batch, computed ahead if need be (``peek_many``)."""
        return self.peek_many([node])[0]

    def peek_many(self, nodes: list[fx.Node]) -> list[list[Any]]:
        """For each of ``nodes``, its value in every batch, computed ahead of the walk if need
        be from the live values it depends on (ancestors shared by ``nodes`` are computed
        once; nothing is stored: the walk computes them again in their turn). Fails when an
        input they need was already freed."""
        out: list[list[Any]] = [[] for _ in nodes]
        for interp in self.interps:
            live = interp.env
            interp.env = dict(live)  # a scratch environment for the look-ahead
            try:
                for n in _ancestors(nodes, interp.env):
                    interp.env[n] = interp.run_node(n)
                for values, node in zip(out, nodes, strict=True):
                    values.append(interp.env[node])
            finally:
                interp.env = live
        return out

    def replace(self, node: fx.Node, values: Iterable[Any]) -> None:
        """Give the live ``node`` new values, one per batch."""
        values = list(values)
        if len(values) != len(self.interps):
            raise ValueError(f"replace({node.name}) got {len(values)} values for "
                             f"{len(self.interps)} batches")
        for interp, v in zip(self.interps, values, strict=True):
            interp.env[node] = v

    def run(self, watched: Iterable[fx.Node], before: Callable[[fx.Node], None],
            progress: bool = False, desc: str = "qpass layer-wise") -> None:
        """Walk the graph; call ``before(node)`` for each node of ``watched`` just before it is
        computed. Stops after the last watched node."""
        todo = set(watched)
        bar = tqdm(total=len(todo), desc=desc, disable=not progress, unit="layer")
        with torch.no_grad(), bar:
            while todo and self._pos < len(self._nodes):
                node = self._nodes[self._pos]
                if node.op == "output":
                    break
                if node in todo:
                    before(node)
                    todo.discard(node)
                    bar.update(1)
                self._step(node)
        if todo:
            names = ", ".join(sorted(n.name for n in todo))
            raise ValueError(f"the layer-wise walk never reached {names}: they are not nodes of "
                             "the graph it walked")
        self.close()

    def advance(self, until: fx.Node, *, through: bool = False) -> None:
        """Compute the nodes not computed yet before ``until``, and ``until`` itself when
        ``through``: a second walk kept level with the one that ``run`` drives (GPTQ's walk of
        the float model beside the quantized one)."""
        if until not in self._index:
            raise ValueError(f"the layer-wise walk cannot reach {until.name}: it is not a node "
                             "of the graph it walks")
        stop = self._index[until] + (1 if through else 0)
        with torch.no_grad():
            while self._pos < stop:
                self._step(self._nodes[self._pos])

    def close(self) -> None:
        """Free the remaining live values."""
        self.interps = []

    def _step(self, node: fx.Node) -> None:
        for interp in self.interps:
            interp.env[node] = interp.run_node(node)
            for dead in self._last_uses.get(node, []):
                del interp.env[dead]
        self._pos += 1


def _ancestors(nodes: list[fx.Node], env: dict[fx.Node, Any]) -> list[fx.Node]:
    """The nodes ``nodes`` need that ``env`` lacks, themselves included, in topological
    order."""
    order: list[fx.Node] = []
    seen: set[fx.Node] = set()
    stack = [(n, False) for n in reversed(nodes)]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if n in seen or n in env:
            continue
        if n.op == "placeholder":
            raise ValueError(f"the layer-wise walk cannot compute {nodes[0].name} ahead: it "
                             f"needs the input {n.name}, freed after its last use")
        seen.add(n)
        stack.append((n, True))
        stack.extend((a, False) for a in n.all_input_nodes)
    return order
