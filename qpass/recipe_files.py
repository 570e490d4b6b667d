"""Recipes as YAML, TOML or JSON files, with the schema of ``Recipe.to_dict``.

A recipe file is a mapping (every key but ``name`` optional)::

    name: w8a8_smoothquant            # required
    description: SmoothQuant, then int8 weights per channel and int8 activations per token
    precision:                        # the default LayerPrecision of every quantizable op
      weight:     {format: int8, symmetric: true, granularity: {type: per_channel, axis: 0}}
      activation: {format: int8, symmetric: true, granularity: per_token, dynamic: true}
      reason: my default              # shown in the report
    keep_float: ["*embed*", lm_head, "*.lm_head"]   # module-FQN globs that stay float
    policies:                         # refine precisions in order; later ones win
      - {type: keep_sensitive, ...}   # a name registered in qpass.policy.POLICIES
    passes:                           # graph transforms, run in order within their stage
      - {type: smoothquant, alpha: 0.5}   # a name registered in qpass.passes.PASSES

``QuantSpec`` keys: ``format`` (int8, uint8, int4, uint4, fp8_e4m3, fp8_e5m2), ``symmetric``,
``granularity`` (``per_tensor``, ``per_channel`` + ``axis``, ``per_token``, ``per_group`` +
``size``; a string or a mapping with ``type``), ``dynamic``, ``observer`` (a name in
``qpass.observe.OBSERVERS``). ``LayerPrecision`` keys: ``weight``, ``activation``, ``reason``,
``outlier_threshold``, ``outlier_mode``, ``outlier_columns``. Policy and pass entries take their
dataclass fields. ``qpass recipes`` lists the registered names; ``qpass recipes --show NAME``
prints a preset in this schema. An unknown key is rejected with its path, the allowed keys and
the closest match.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

from qpass.config import Recipe
from qpass.recipes import RECIPES

SUFFIXES = (".yaml", ".yml", ".toml", ".json")


class RecipeFileError(ValueError):
    """A recipe file cannot be read, or does not describe a valid recipe."""


def is_recipe_file(text: str) -> bool:
    """True when ``text`` names a recipe file (by suffix or because the file exists)."""
    return Path(text).suffix.lower() in SUFFIXES or Path(text).is_file()


def load_recipe(source: str | Path) -> Recipe:
    """A preset or plugin name (``w8a8_dynamic``), or the path of a YAML/TOML/JSON file."""
    if isinstance(source, str) and not is_recipe_file(source):
        return RECIPES.get(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {str(path)!r} does not exist; give a preset name "
                                f"({', '.join(RECIPES.names())}) or the path of a "
                                f"{'/'.join(SUFFIXES)} file")
    data = parse_recipe_text(path.read_text(encoding="utf-8"), path.suffix.lower(), str(path))
    return recipe_from_data(data, str(path))


def parse_recipe_text(text: str, suffix: str, where: str) -> Any:
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except ImportError as exc:
        raise ImportError(f"reading the YAML recipe {where!r} needs pyyaml: pip install pyyaml "
                          "(or write the recipe as .toml or .json)") from exc
    except Exception as exc:  # each parser has its own error type; all carry a position
        raise RecipeFileError(f"recipe file {where!r} is not valid "
                              f"{suffix.lstrip('.').upper()}: {exc}") from exc


def recipe_from_data(data: Any, where: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeFileError(f"recipe file {where!r} must hold a mapping with at least 'name', "
                              f"got {type(data).__name__}")
    try:
        return Recipe.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise RecipeFileError(f"recipe file {where!r}: {text}") from exc


def recipe_to_text(recipe: Recipe, suffix: str) -> str:
    """The recipe in the format of ``suffix``; checked to read back to the same recipe."""
    data = recipe.to_dict()
    if suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif suffix == ".toml":
        text = _toml(_drop_none(data))
    elif suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)
    else:
        raise ValueError(f"recipe file suffix {suffix!r} is not one of {', '.join(SUFFIXES)}")
    if recipe_from_data(parse_recipe_text(text, suffix, "(dumped recipe)"), "-") != recipe:
        raise RecipeFileError(
            f"recipe {recipe.name!r} does not survive a round trip through {suffix} (TOML has no "
            "null: a field whose value is None but whose default is not cannot be written); "
            "write it as .yaml or .json")
    return text


def dump_recipe(recipe: Recipe, path: str | Path) -> Path:
    path = Path(path)
    text = recipe_to_text(recipe, path.suffix.lower() or ".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _drop_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v]
    return v


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise RecipeFileError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _toml(data: dict[str, Any]) -> str:
    """Scalars and inline tables at the top, then [[policies]] / [[passes]] tables."""
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, items in tables:
        for item in items:
            lines += ["", f"[[{_toml_key(k)}]]"]
            lines += [f"{_toml_key(f)} = {_toml_value(x)}" for f, x in item.items()]
    return "\n".join(lines) + "\n"
