"""``rules``: precision by module FQN and op type, matched with globs or regular expressions.

Precedence, from weakest to strongest:

1. policies run in recipe order and a later policy overrides an earlier one;
2. inside one ``Rules`` policy the rules are tried in order and the **last matching rule wins**
   (like CSS, or a later line of a ``.gitignore``): write general rules first, exceptions after.

A rule that matches no quantizable op is almost always a typo; qpass warns, naming it::

    Rules((
        Rule("*.mlp.*", precision=W4_G128),                  # every MLP projection int4 ...
        Rule("*.layers.0.*", precision=FLOAT),                # ... except the first layer
        Rule(r".*\\.(q|k)_proj", syntax="regex", precision=W8A8),
    ))
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import warnings
from dataclasses import dataclass
from typing import Any

from qpass.config import LayerPrecision, _check_keys
from qpass.policy import POLICIES, Policy, PolicyContext
from qpass.quantizable import Site

SYNTAXES = ("glob", "regex")
ANY = "*"  # matches everything in both syntaxes


def _bad(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"Rule.{name}={value!r} is not valid; allowed: {allowed}")


@dataclass(frozen=True)
class Rule:
    """Sites whose module FQN matches ``fqn`` and whose op type (``linear``, ``mm``,
    ``addmm``, ``matmul``) matches ``op`` get ``precision``. ``syntax`` says how both patterns
    are read: shell globs (``fnmatch``, case-sensitive) or regular expressions matched against
    the whole name (``re.fullmatch``); a lone ``*`` matches everything in both syntaxes.
    ``name`` labels the rule in warnings and reports."""

    fqn: str = "*"
    precision: LayerPrecision = dataclasses.field(default_factory=LayerPrecision)
    op: str = "*"
    syntax: str = "glob"
    name: str = ""

    def __post_init__(self) -> None:
        if self.syntax not in SYNTAXES:
            raise _bad("syntax", self.syntax, ", ".join(SYNTAXES))
        if not isinstance(self.precision, LayerPrecision):
            raise _bad("precision", self.precision, "a qpass.LayerPrecision")
        for field_name in ("fqn", "op"):
            pattern = getattr(self, field_name)
            if not isinstance(pattern, str) or not pattern:
                raise _bad(field_name, pattern, "a non-empty pattern string")
            if self.syntax == "regex" and pattern != ANY:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise _bad(field_name, pattern, f"a valid regular expression ({exc})") from None

    @property
    def label(self) -> str:
        return self.name or (f"fqn={self.fqn!r}" + (f" op={self.op!r}" if self.op != "*" else ""))

    def _match(self, pattern: str, text: str) -> bool:
        if pattern == ANY:
            return True
        if self.syntax == "regex":
            return re.fullmatch(pattern, text) is not None
        return fnmatch.fnmatchcase(text, pattern)

    def matches(self, site: Site) -> bool:
        return self._match(self.fqn, site.fqn) and self._match(self.op, site.op_type)

    def to_dict(self) -> dict[str, Any]:
        return {"fqn": self.fqn, "precision": self.precision.to_dict(), "op": self.op,
                "syntax": self.syntax, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "rule") -> Rule:
        d = dict(d)
        _check_keys(d, {f.name for f in dataclasses.fields(cls)}, where)
        if "precision" in d and not isinstance(d["precision"], LayerPrecision):
            d["precision"] = LayerPrecision.from_dict(d["precision"], f"{where}.precision")
        return cls(**d)


@POLICIES.register("rules")
@dataclass(frozen=True)
class Rules(Policy):
    """Ordered rules; the last one that matches a site decides its precision."""

    rules: tuple[Rule, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.rules, tuple) or not all(isinstance(r, Rule) for r in self.rules):
            raise ValueError(f"Rules.rules={self.rules!r} is not valid; allowed: a tuple of "
                             "qpass.policies.Rule")

    def assign(self, sites: list[Site], ctx: PolicyContext) -> dict[str, LayerPrecision]:
        out: dict[str, LayerPrecision] = {}
        matched: dict[str, list[str]] = {}
        for i, rule in enumerate(self.rules):
            hits = [s for s in sites if rule.matches(s)]
            matched[rule.label] = [s.fqn or s.node.name for s in hits]
            if not hits:
                warnings.warn(
                    f"qpass rules policy: rule {i} ({rule.label}) matched no quantizable op "
                    f"of the {len(sites)} in the graph; check the pattern against the module "
                    f"FQNs (e.g. {sites[0].fqn if sites else 'none'!r}) and op types",
                    UserWarning, stacklevel=2)
            reason = f"rule {i} ({rule.label})"
            for s in hits:  # later rules overwrite earlier ones
                out[s.node.name] = dataclasses.replace(rule.precision, reason=reason)
        ctx.report.setdefault("rules", []).append(matched)
        return out
