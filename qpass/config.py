"""qpass's vocabulary as frozen, validated dataclasses: QuantSpec, LayerPrecision, Recipe.

Every config validates itself in ``__post_init__`` and names the field, the value given and
what is allowed. Recipes round-trip through plain dicts (``to_dict`` / ``from_dict``) so
they can be stored as YAML/TOML/JSON and in an exported model's metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from qpass.numerics import FORMATS, Format, get_format


def _bad(cls: str, name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{cls}.{name}={value!r} is not valid; allowed: {allowed}")


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale per index of ``axis`` (for a linear weight [out, in]: axis 0, the output)."""

    axis: int = 0


@dataclass(frozen=True)
class PerToken:
    """One scale per row of the activation (the last axis is reduced); dynamic only."""


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``size`` consecutive elements along the last (input) axis."""

    size: int = 128

    def __post_init__(self) -> None:
        if self.size < 1:
            raise _bad("PerGroup", "size", self.size, "a positive integer such as 32, 64 or 128")


Granularity = PerTensor | PerChannel | PerToken | PerGroup
_GRANULARITIES = {"per_tensor": PerTensor, "per_channel": PerChannel, "per_token": PerToken,
                  "per_group": PerGroup}


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    ``sink_tokens`` (static per-tensor activations only): the first ``sink_tokens`` positions
    of every sequence (axis -2 of an activation [batch, tokens, features]) get their own static
    scale, calibrated on those positions alone. LLMs put massive activations on their first
    token (the attention sink; on SmolLM2 |x| = 2960 there against 21 elsewhere at one
    ``down_proj`` input), which one per-tensor scale would have to cover for every token.
    """

    format: str = "int8"
    symmetric: bool = True
    granularity: Granularity = field(default_factory=PerTensor)
    dynamic: bool = False
    observer: str = "minmax"
    sink_tokens: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise _bad("QuantSpec", "format", self.format, ", ".join(FORMATS))
        if not isinstance(self.granularity, Granularity):
            raise _bad("QuantSpec", "granularity", self.granularity,
                       "PerTensor(), PerChannel(axis), PerToken() or PerGroup(size)")
        if isinstance(self.granularity, PerToken) and not self.dynamic:
            raise _bad("QuantSpec", "granularity", self.granularity,
                       "PerToken() only with dynamic=True (token ranges are known at run time)")
        if self.fmt.is_float and not self.symmetric:
            raise _bad("QuantSpec", "symmetric", self.symmetric,
                       f"True for {self.format}: float formats have no zero point")
        self._check_sink()

    def _check_sink(self) -> None:
        n = self.sink_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise _bad("QuantSpec", "sink_tokens", n,
                       "a non-negative integer (1: the first token gets its own scale; 0: off)")
        if n and (self.dynamic or not isinstance(self.granularity, PerTensor)):
            raise _bad("QuantSpec", "sink_tokens", n,
                       "0 unless the spec is static and PerTensor(): dynamic and per-token "
                       "scales already give every token its own range")

    @property
    def fmt(self) -> Format:
        return get_format(self.format)

    def to_dict(self) -> dict[str, Any]:
        g = self.granularity
        gran = {"type": next(k for k, v in _GRANULARITIES.items() if isinstance(g, v)),
                **dataclasses.asdict(g)}
        out = {"format": self.format, "symmetric": self.symmetric, "granularity": gran,
               "dynamic": self.dynamic, "observer": self.observer}
        return {**out, "sink_tokens": self.sink_tokens} if self.sink_tokens else out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "spec") -> QuantSpec:
        d = dict(d)
        _check_keys(d, {f.name for f in dataclasses.fields(cls)}, where)
        gran = d.get("granularity", {"type": "per_tensor"})
        if isinstance(gran, str):
            gran = {"type": gran}
        gran = dict(gran)
        kind = gran.pop("type", "per_tensor")
        if kind not in _GRANULARITIES:
            raise _bad("QuantSpec", "granularity.type", kind, ", ".join(_GRANULARITIES))
        d["granularity"] = _GRANULARITIES[kind](**gran)
        return cls(**d)


OUTLIER_MODES = ("static", "dynamic")


@dataclass(frozen=True)
class LayerPrecision:
    """What one op gets. ``weight=None`` and ``activation=None`` together mean: stay float.

    ``outlier_threshold`` turns on the LLM.int8() split (``qpass.policies.llm_int8``): input
    columns whose |x| exceeds it stay float, the rest run through the quantized path.
    ``outlier_mode="static"`` uses the ``outlier_columns`` fixed at calibration;
    ``"dynamic"`` finds the columns from each batch at run time, as bitsandbytes does.
    A static split may quantize its activations statically: their range is calibrated with
    the outlier columns zeroed, which is what the int8 part sees.
    """

    weight: QuantSpec | None = None
    activation: QuantSpec | None = None
    reason: str = ""
    outlier_threshold: float | None = None
    outlier_mode: str = "static"
    outlier_columns: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        a = self.activation
        if a is not None and not a.dynamic and isinstance(a.granularity, (PerChannel, PerGroup)):
            raise _bad("LayerPrecision", "activation.granularity", a.granularity,
                       "PerTensor() for static activations, PerToken() for dynamic ones")
        if self.weight is not None and self.weight.sink_tokens:
            raise _bad("LayerPrecision", "weight.sink_tokens", self.weight.sink_tokens,
                       "0: sink tokens are positions of an activation, weights have none")
        if a is not None and a.sink_tokens and self.outlier_threshold is not None:
            raise _bad("LayerPrecision", "activation.sink_tokens", a.sink_tokens,
                       "0 with an LLM.int8() split (outlier_threshold): qpass does not "
                       "combine the two")
        self._check_outliers()

    def _check_outliers(self) -> None:
        t, cols = self.outlier_threshold, self.outlier_columns
        if self.outlier_mode not in OUTLIER_MODES:
            raise _bad("LayerPrecision", "outlier_mode", self.outlier_mode,
                       ", ".join(OUTLIER_MODES))
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)
                              or not math.isfinite(t) or t <= 0):
            raise _bad("LayerPrecision", "outlier_threshold", t,
                       "a positive finite number (LLM.int8() uses 6.0), or None for no split")
        if t is not None and self.weight is None:
            raise _bad("LayerPrecision", "weight", None,
                       "a weight spec when outlier_threshold is set (the split needs a "
                       "quantized path)")
        if t is not None and self.outlier_mode == "dynamic" and _is_static(self.activation):
            raise _bad("LayerPrecision", "activation.dynamic", False,
                       "dynamic activations (or activation=None) with outlier_mode='dynamic': "
                       "its columns change per batch, so no calibrated range fits them; use "
                       "outlier_mode='static' for static activations")
        if cols is None:
            return
        if not isinstance(cols, tuple | list) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cols):
            raise _bad("LayerPrecision", "outlier_columns", cols,
                       "a sequence of non-negative column indices, or None")
        if t is None or self.outlier_mode != "static":
            raise _bad("LayerPrecision", "outlier_columns", cols,
                       "None unless outlier_threshold is set and outlier_mode is 'static'")
        object.__setattr__(self, "outlier_columns", tuple(sorted(set(cols))))

    @property
    def is_float(self) -> bool:
        return self.weight is None and self.activation is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"weight": self.weight and self.weight.to_dict(),
                               "activation": self.activation and self.activation.to_dict()}
        if self.outlier_threshold is not None:
            out.update(outlier_threshold=self.outlier_threshold, outlier_mode=self.outlier_mode,
                       outlier_columns=None if self.outlier_columns is None
                       else list(self.outlier_columns))
        return {**out, "reason": self.reason} if self.reason else out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "precision") -> LayerPrecision:
        d = dict(d)
        _check_keys(d, {f.name for f in dataclasses.fields(cls)}, where)
        for role in ("weight", "activation"):
            if d.get(role):
                d[role] = QuantSpec.from_dict(d[role], f"{where}.{role}")
        if d.get("outlier_columns") is not None:
            d["outlier_columns"] = tuple(d["outlier_columns"])
        return cls(**d)


def _is_static(spec: QuantSpec | None) -> bool:
    """True for a quantized activation whose range is calibrated ahead of time."""
    return spec is not None and not spec.dynamic


FLOAT = LayerPrecision(reason="float")


def _check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown key {where}.{key}; allowed keys: "
                             f"{', '.join(sorted(allowed))}{hint}")


@dataclass(frozen=True)
class Recipe:
    """What to quantize and how.

    ``precision`` is the default for every quantizable op; ``keep_float`` lists the module-FQN
    globs that stay float (embeddings and ``lm_head`` by default); ``policies`` (registered
    in ``qpass.policy.POLICIES``) then refine the assignment in order, later ones winning;
    ``passes`` (registered in ``qpass.passes.PASSES``) are the graph transforms, run in order
    within their stage (see ``qpass.passes``).
    """

    name: str
    precision: LayerPrecision
    keep_float: tuple[str, ...] = ("*embed*", "lm_head", "*.lm_head")
    policies: tuple[Any, ...] = ()
    passes: tuple[Any, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise _bad("Recipe", "name", self.name, "a non-empty name")
        if isinstance(self.keep_float, str) or not all(isinstance(p, str) for p in self.keep_float):
            raise _bad("Recipe", "keep_float", self.keep_float, "a tuple of glob strings")
        if self.precision.weight is None and self.precision.activation is not None:
            raise _bad("Recipe", "precision.weight", None,
                       "a weight spec whenever activations are quantized")
        from qpass.passes import PASSES, Pass
        from qpass.policy import POLICIES, Policy

        for fname, base, registry in (("policies", Policy, POLICIES), ("passes", Pass, PASSES)):
            items = getattr(self, fname)
            if not isinstance(items, tuple) or not all(isinstance(i, base) for i in items):
                raise _bad("Recipe", fname, items,
                           f"a tuple of {base.__name__} instances ({', '.join(registry.names())})")

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed, e.g. ``recipe.replace(passes=(SmoothQuant(),))``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        from qpass.passes import PASSES
        from qpass.policy import POLICIES

        return {"name": self.name, "description": self.description,
                "precision": self.precision.to_dict(), "keep_float": list(self.keep_float),
                "policies": [component_to_dict(p, POLICIES) for p in self.policies],
                "passes": [component_to_dict(p, PASSES) for p in self.passes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        from qpass.passes import PASSES
        from qpass.policy import POLICIES

        _check_keys(d, {f.name for f in dataclasses.fields(cls)}, "recipe")
        if "name" not in d:
            raise ValueError("recipe.name is missing; every recipe needs a name")
        kf = d.get("keep_float", Recipe.__dataclass_fields__["keep_float"].default)
        return cls(
            name=d["name"], description=d.get("description", ""),
            precision=LayerPrecision.from_dict(d.get("precision", {}), "recipe.precision"),
            keep_float=tuple(kf),
            policies=tuple(component_from_dict(p, POLICIES, f"recipe.policies[{i}]")
                           for i, p in enumerate(d.get("policies", ()))),
            passes=tuple(component_from_dict(p, PASSES, f"recipe.passes[{i}]")
                         for i, p in enumerate(d.get("passes", ()))))


def component_to_dict(obj: Any, registry: Any) -> dict[str, Any]:
    """A registered frozen-dataclass component (a policy, a pass) as ``{"type": name, ...}``."""
    out: dict[str, Any] = {"type": registry.name_of(obj)}
    for f in dataclasses.fields(obj):
        out[f.name] = _plain(getattr(obj, f.name))
    return out


def component_from_dict(d: dict[str, Any], registry: Any, where: str) -> Any:
    """The inverse of ``component_to_dict``: fields are converted by their type hints."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"{where} must be a mapping with a 'type' key naming one of: "
                         f"{', '.join(registry.names())}")
    d = dict(d)
    cls = registry.get(d.pop("type"))
    hints = typing.get_type_hints(cls)
    _check_keys(d, {f.name for f in dataclasses.fields(cls)}, where)
    kwargs = {k: _typed(v, hints.get(k), f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def _plain(v: Any) -> Any:
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _typed(v: Any, hint: Any, where: str) -> Any:
    """Convert a plain value to the field's annotated type where it is a qpass config."""
    if v is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    from_dict = getattr(hint, "from_dict", None)
    if isinstance(hint, type) and callable(from_dict) and isinstance(v, dict):
        return from_dict(v, where)  # any config class with from_dict(d, where), e.g. a Rule
    if hint is LayerPrecision or LayerPrecision in args:
        return v if isinstance(v, LayerPrecision) else LayerPrecision.from_dict(v, where)
    if hint is QuantSpec or QuantSpec in args:
        return v if isinstance(v, QuantSpec) else QuantSpec.from_dict(v, where)
    if typing.get_origin(hint) is tuple and isinstance(v, list | tuple):
        inner = args[0] if args else None
        return tuple(_typed(x, inner, f"{where}[{i}]") for i, x in enumerate(v))
    if typing.get_origin(hint) is dict and isinstance(v, dict):
        inner = args[1] if len(args) == 2 else None
        return {k: _typed(x, inner, f"{where}.{k}") for k, x in v.items()}
    return v
