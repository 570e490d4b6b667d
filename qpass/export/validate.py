"""Check an ONNX file against an export profile's rules: which node breaks which rule.

``validate(model_or_path, profile)`` returns every violation; ``check`` raises
``ExportValidationError`` when there are errors. Rules are plain functions registered by name
(``@RULES.register("tensorrt.symmetric")``, plugins through the ``qpass.export_rules``
entry-point group); a profile lists the rules it applies. They read the graph only, so they
work on any QDQ ONNX, whoever wrote it::

    from qpass.export import validate
    for v in validate("model.onnx", "tensorrt"):
        print(v)   # error [tensorrt.symmetric] 'x_q' (QuantizeLinear): zero point is 12, ...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx

from qpass.export.qdq_graph import QDQGraph, node_label
from qpass.registry import Registry

log = logging.getLogger(__name__)
SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Violation:
    """One node breaking one rule. ``severity="error"``: the target runtime refuses the model
    or computes something else; ``"warning"``: it runs, but slower or less exactly."""

    rule: str
    node: str  # the node's name ('' for the model as a whole)
    op_type: str
    message: str
    severity: str = "error"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"Violation.severity={self.severity!r} is not valid; allowed: "
                             f"{', '.join(SEVERITIES)}")

    def __str__(self) -> str:
        where = f"{self.node or '<unnamed>'!r} ({self.op_type})" if self.op_type else "model"
        return f"{self.severity} [{self.rule}] {where}: {self.message}"


RuleFn = Callable[[QDQGraph], Iterable[Violation]]
RULES: Registry[RuleFn] = Registry("export rule", "qpass.export_rules")


def violation(rule: str, node: onnx.NodeProto | None, message: str,
              severity: str = "error") -> Violation:
    if node is None:
        return Violation(rule, "", "", message, severity)
    return Violation(rule, node.name, node.op_type, message, severity)


class ExportValidationError(ValueError):
    """An ONNX model breaks its profile's rules; ``violations`` lists them."""

    def __init__(self, profile: str, violations: list[Violation], source: str) -> None:
        self.violations = violations
        errors = [v for v in violations if v.severity == "error"]
        shown = "\n  ".join(str(v) for v in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(
            f"{source} breaks {len(errors)} rule(s) of the {profile!r} export profile:\n  "
            f"{shown}{more}")


def _load(model_or_path: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "the ONNX model"
    path = Path(model_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist or is not a file; "
                                "pass an onnx.ModelProto or the path of an .onnx file")
    return onnx.load(path), repr(str(path))


def validate(model_or_path: onnx.ModelProto | str | os.PathLike,
             profile: str | object = "ort") -> list[Violation]:
    """Every violation of ``profile``'s rules in the model (errors and warnings)."""
    from qpass.export.profiles import get_profile

    prof = get_profile(profile)
    model, _ = _load(model_or_path)
    graph = QDQGraph(model)
    out: list[Violation] = []
    for name in prof.rules:
        out.extend(RULES.get(name)(graph))
    return out


def check(model_or_path: onnx.ModelProto | str | os.PathLike, profile: str | object = "ort",
          *, strict: bool = False) -> list[Violation]:
    """Like ``validate``, but raise ``ExportValidationError`` on any error (and, with
    ``strict=True``, on any warning). Returns the warnings otherwise."""
    from qpass.export.profiles import get_profile

    prof = get_profile(profile)
    model, source = _load(model_or_path)
    found = validate(model, prof)
    failing = found if strict else [v for v in found if v.severity == "error"]
    if failing:
        if strict:
            failing = [Violation(v.rule, v.node, v.op_type, v.message, "error") for v in found]
        raise ExportValidationError(prof.name, failing, source)
    return found


__all__ = ["RULES", "ExportValidationError", "Violation", "check", "node_label", "validate",
           "violation"]
