"""Errors ``export_onnx`` raises before and after torch.onnx runs, in the user's terms.

- ``check_profile``: layers whose precision the profile cannot express, by module FQN;
- ``unsupported_op_error``: torch.onnx found no ONNX translation for an op: which op, at
  which node and module, whether it sits in a quantized region, and a policy rule that keeps
  that region float;
- ``check_writable``: an output path that cannot be written, before minutes of export.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.fx as fx

from qpass.capture.fqn import describe, module_fqn
from qpass.state import META_KEY, QpassState

_OP_RE = re.compile(r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)")
SHOWN = 5


def qpass_state(gm: torch.nn.Module) -> QpassState | None:
    state = getattr(gm, "meta", {}).get(META_KEY) if isinstance(gm, fx.GraphModule) else None
    return state if isinstance(state, QpassState) else None


def _keep_float_hint(fqns: list[str]) -> str:
    pattern = fqns[0] if len(fqns) == 1 else _common_glob(fqns)
    return (f"keep them float with a policy rule, e.g. recipe.replace(policies=(*recipe.policies,"
            f" Rules((Rule({pattern!r}, precision=LayerPrecision()),)))) or add {pattern!r} to "
            "the recipe's keep_float")


def _common_glob(fqns: list[str]) -> str:
    parts = [f.split(".") for f in fqns]
    if len({len(p) for p in parts}) != 1:
        return fqns[0]
    return ".".join(p[0] if len(set(p)) == 1 else "*" for p in zip(*parts, strict=True))


def check_profile(gm: torch.nn.Module, profile) -> None:
    """Raise ValueError naming the quantized layers ``profile`` cannot express."""
    state = qpass_state(gm)
    if state is None:
        return
    bad: dict[str, list[str]] = {}
    for name, prec in state.precisions.items():
        problem = None if prec.is_float else profile.unsupported(prec)
        if problem:
            bad.setdefault(problem, []).append(state.fqns.get(name) or name)
    if not bad:
        return
    lines = [f"- {len(fqns)} layer(s) ({', '.join(fqns[:SHOWN])}"
             f"{', ...' if len(fqns) > SHOWN else ''}) use {problem}"
             for problem, fqns in bad.items()]
    every = [f for fqns in bad.values() for f in fqns]
    raise ValueError(
        f"export profile {profile.name!r} does not support recipe {state.recipe.name!r} as "
        f"quantized:\n" + "\n".join(lines) + "\nOr, to export the rest, "
        + _keep_float_hint(every))


def _quantized_near(state: QpassState, fqn: str) -> list[str]:
    """Quantized layers in the module ``fqn`` or below it."""
    quantized = [state.fqns.get(n) or n for n, p in state.precisions.items() if not p.is_float]
    return [q for q in quantized if not fqn or q == fqn or q.startswith(f"{fqn}.")]


def unsupported_op_error(exc: Exception, gm: torch.nn.Module) -> RuntimeError | None:
    """A RuntimeError naming the op torch.onnx could not translate, or None if it is not that."""
    text = "\n".join(str(e) for e in _chain(exc))
    found = _OP_RE.search(text)
    if found is None or not isinstance(gm, fx.GraphModule):
        return None
    target = f"{found.group(1)}.{found.group(2)}"
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target) == target]
    op = found.group(1).replace(".", "::", 1)
    if not nodes:
        return RuntimeError(f"qpass could not export op {op}: torch.onnx has no ONNX "
                            "translation for it. Give it one (torch.onnx.export's "
                            "custom_translation_table) or replace it in the model")
    node = nodes[0]
    fqn = module_fqn(node)
    state = qpass_state(gm)
    near = _quantized_near(state, fqn) if state is not None else []
    region = (f"It sits in a quantized region (module {fqn or '<root>'!r} holds quantized "
              f"layers {', '.join(near[:SHOWN])}); " + _keep_float_hint(near)
              + ", or give the op an ONNX translation (torch.onnx.export's "
              "custom_translation_table)") if near else (
              "Give it an ONNX translation (torch.onnx.export's custom_translation_table) or "
              "replace it in the model")
    return RuntimeError(
        f"qpass could not export op {op} at {describe(node)}: torch.onnx has no ONNX "
        f"translation for it ({len(nodes)} node(s) use it). {region}")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def check_writable(path: Path) -> None:
    """Raise OSError-derived errors with a clear message if ``path`` cannot be written."""
    if path.is_dir():
        raise IsADirectoryError(f"ONNX output path {str(path)!r} is a directory; pass a file "
                                "path such as 'exports/model.onnx'")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the folder {str(path.parent)!r} for the ONNX output "
                      f"{str(path)!r}: {exc.strerror or exc}; choose a writable location") from exc
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"ONNX output {str(path)!r} is not writable (no write permission "
                              f"on {str(path if path.exists() else path.parent)!r}); choose a "
                              "writable location")
