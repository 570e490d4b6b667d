"""qpass's vocabulary as frozen, validated dataclasses: QuantSpec, LayerPrecision, Recipe.

Every config validates itself in ``__post_init__`` and names the field, the value given and
what is allowed. Recipes round-trip through plain dicts (``to_dict`` / ``from_dict``) so
they can be stored as YAML/TOML/JSON and in an exported model's metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
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
    """How one tensor is quantized."""

    format: str = "int8"
    symmetric: bool = True
    granularity: Granularity = field(default_factory=PerTensor)
    dynamic: bool = False
    observer: str = "minmax"

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

    @property
    def fmt(self) -> Format:
        return get_format(self.format)

    def to_dict(self) -> dict[str, Any]:
        g = self.granularity
        gran = {"type": next(k for k, v in _GRANULARITIES.items() if isinstance(g, v)),
                **dataclasses.asdict(g)}
        return {"format": self.format, "symmetric": self.symmetric, "granularity": gran,
                "dynamic": self.dynamic, "observer": self.observer}

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


@dataclass(frozen=True)
class LayerPrecision:
    """What one op gets. ``weight=None`` and ``activation=None`` together mean: stay float."""

    weight: QuantSpec | None = None
    activation: QuantSpec | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        a = self.activation
        if a is not None and not a.dynamic and isinstance(a.granularity, (PerChannel, PerGroup)):
            raise _bad("LayerPrecision", "activation.granularity", a.granularity,
                       "PerTensor() for static activations, PerToken() for dynamic ones")

    @property
    def is_float(self) -> bool:
        return self.weight is None and self.activation is None

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight and self.weight.to_dict(),
                "activation": self.activation and self.activation.to_dict()}


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
    """What to quantize and how: a default precision for the quantizable ops, and the
    module-FQN globs that stay float (embeddings and ``lm_head`` by default)."""

    name: str
    precision: LayerPrecision
    keep_float: tuple[str, ...] = ("*embed*", "lm_head", "*.lm_head")
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise _bad("Recipe", "name", self.name, "a non-empty name")
        if isinstance(self.keep_float, str) or not all(isinstance(p, str) for p in self.keep_float):
            raise _bad("Recipe", "keep_float", self.keep_float, "a tuple of glob strings")
        if self.precision.weight is None and self.precision.activation is not None:
            raise _bad("Recipe", "precision.weight", None,
                       "a weight spec whenever activations are quantized")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "precision": self.precision.to_dict(), "keep_float": list(self.keep_float)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        _check_keys(d, {"name", "description", "precision", "keep_float"}, "recipe")
        prec = dict(d.get("precision", {}))
        _check_keys(prec, {"weight", "activation"}, "recipe.precision")
        specs = {k: QuantSpec.from_dict(v, f"recipe.precision.{k}") if v else None
                 for k, v in prec.items()}
        kf = d.get("keep_float", Recipe.__dataclass_fields__["keep_float"].default)
        return cls(name=d["name"], description=d.get("description", ""),
                   precision=LayerPrecision(**specs), keep_float=tuple(kf))
