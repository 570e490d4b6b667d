"""Run a prepared graph and look at every quantization site on the way.

``SiteTap`` is an ``fx.Interpreter`` over a graph returned by ``qpass.prepare`` (the float
graph after the recipe's float passes, with observers in it). At each site it hands
``(site, x, w, y)`` to a callback: ``x`` the activation input, ``w`` the weight as
[out, in], ``y`` the op's float output. With ``simulate=True`` each site's output is replaced
by what the converted model computes (``simulated_output``), so activations downstream carry
the error of every quantized site upstream: the error through depth.

Observers are switched off while tapping, so the report never changes calibration state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx

from qpass import numerics
from qpass.config import LayerPrecision, QuantSpec
from qpass.convert.weights import quantize_weight
from qpass.observe.module import ObserverModule
from qpass.observe.sink import fake_quantize_static
from qpass.quantizable import Site, canonical_weight, find_sites
from qpass.state import get_state

Callback = Callable[[Site, torch.Tensor, torch.Tensor, torch.Tensor], None]


@contextlib.contextmanager
def observers_off(gm: fx.GraphModule) -> Iterator[None]:
    mods = [m for m in gm.modules() if isinstance(m, ObserverModule)]
    flags = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield
    finally:
        for m, flag in zip(mods, flags, strict=True):
            m.enabled = flag


def static_qparams(gm: fx.GraphModule, site: Site,
                   spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The calibrated (scale, zero point) of a site's static activation, if it has one."""
    x = site.activation_node
    if spec.dynamic or x.op != "call_module":
        return None
    module = gm.get_submodule(str(x.target))
    if not isinstance(module, ObserverModule) or module.observer.count == 0:
        return None
    return module.observer.qparams(spec)


class SiteTap(fx.Interpreter):
    def __init__(self, prepared: fx.GraphModule, callback: Callback | None = None,
                 simulate: bool = False) -> None:
        super().__init__(prepared)
        self.state = get_state(prepared, "report")
        self.sites = {s.node.name: s for s in find_sites(prepared)}
        self.callback = callback
        self.simulate = simulate
        self._w_dq: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        site = self.sites.get(n.name)
        if site is None:
            return super().run_node(n)
        args, _ = self.fetch_args_kwargs_from_env(n)
        x = args[site.op.activation_arg]
        w = canonical_weight(args[site.op.weight_arg], site.op)
        y = self.simulated_output(site, x, args) if self.simulate else super().run_node(n)
        if self.callback is not None:
            self.callback(site, x, w, y)
        return y

    def dequantized_weight(self, site: Site, w: torch.Tensor, prec: LayerPrecision) -> torch.Tensor:
        """The [K, N] matrix the converted graph multiplies by (cached per site)."""
        name = site.node.name
        if name not in self._w_dq:
            self._w_dq[name] = quantize_weight(w, prec.weight).dequantize()
        return self._w_dq[name]

    def simulated_output(self, site: Site, x: torch.Tensor, args: tuple) -> torch.Tensor:
        """What the converted model computes at this site, from this input."""
        prec = self.state.precisions.get(site.node.name)
        w = canonical_weight(args[site.op.weight_arg], site.op)
        if prec is None or prec.is_float or prec.weight is None:
            return site.node.target(*args)
        if prec.outlier_threshold is not None:
            from qpass.policies.simulate import simulated_matmul  # LLM.int8() split sites

            y = simulated_matmul(x, w, prec)
        else:
            y = fake_quant_activation(self.module, site, x, prec.activation) @ \
                self.dequantized_weight(site, w, prec)
        b = site.op.bias_arg
        if b is not None and len(args) > b and args[b] is not None:
            y = y + args[b]
        return y.to(x.dtype)


def fake_quant_activation(gm: fx.GraphModule, site: Site, x: torch.Tensor,
                          spec: QuantSpec | None) -> torch.Tensor:
    """``x`` as the converted model sees it: calibrated static range, or per-token dynamic."""
    if spec is None:
        return x.float()
    qp = static_qparams(gm, site, spec)
    if qp is not None:
        return fake_quantize_static(x.float(), qp[0], qp[1], spec)
    qp = numerics.dynamic_qparams_per_token(x.float(), spec.fmt, spec.symmetric)
    return numerics.fake_quantize(x.float(), qp[0], qp[1], spec.fmt)


def run_tap(prepared: fx.GraphModule, inputs: tuple[torch.Tensor, ...], callback: Callback,
            simulate: bool = False) -> Any:
    with torch.no_grad(), observers_off(prepared):
        return SiteTap(prepared, callback, simulate).run(*inputs)
