"""Built-in recipes, registered by name. ``resolve_recipe`` accepts a name, a dict or a Recipe."""

from __future__ import annotations

from typing import Any

from qpass.config import (
    LayerPrecision,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    QuantSpec,
    Recipe,
)
from qpass.policies.rules import Rule, Rules
from qpass.registry import Registry
from qpass.transform.embeddings import QuantizeEmbeddings
from qpass.transform.hadamard import HadamardRotate
from qpass.transform.smoothquant import SmoothQuant

RECIPES: Registry[Recipe] = Registry("recipe", "qpass.recipes")

# int8, symmetric, one scale per output channel of a linear weight [out, in].
INT8_WEIGHT = QuantSpec("int8", symmetric=True, granularity=PerChannel(0))

RECIPES.add("w8a16", Recipe(
    "w8a16", LayerPrecision(weight=INT8_WEIGHT, reason="recipe w8a16"),
    description="int8 weights per output channel (symmetric); activations stay float"))

RECIPES.add("w8a8_dynamic", Recipe(
    "w8a8_dynamic",
    LayerPrecision(
        weight=INT8_WEIGHT,
        activation=QuantSpec("int8", symmetric=True, granularity=PerToken(), dynamic=True),
        reason="recipe w8a8_dynamic"),
    description="int8 weights per output channel; int8 activations per token, "
                "scales computed at run time"))

RECIPES.add("w8a8_static", Recipe(
    "w8a8_static",
    LayerPrecision(
        weight=INT8_WEIGHT,
        activation=QuantSpec("int8", symmetric=True, granularity=PerTensor(), observer="minmax"),
        reason="recipe w8a8_static"),
    description="int8 weights per output channel; int8 activations per tensor, "
                "MinMax-calibrated (static)"))

RECIPES.add("w8a8_dynamic_smoothquant", RECIPES.get("w8a8_dynamic").replace(
    name="w8a8_dynamic_smoothquant", passes=(SmoothQuant(alpha=None),),
    description="w8a8_dynamic after SmoothQuant with its migration strength alpha searched "
                "per scale group on the calibration data"))

RECIPES.add("w8a8_dynamic_rotated", RECIPES.get("w8a8_dynamic_smoothquant").replace(
    name="w8a8_dynamic_rotated", passes=(SmoothQuant(alpha=None), HadamardRotate()),
    description="w8a8_dynamic_smoothquant, then a Hadamard rotation (blocks of 128) of every "
                "down_proj input"))

RECIPES.add("w8a8_static_rotated", Recipe(
    "w8a8_static_rotated",
    LayerPrecision(
        weight=INT8_WEIGHT,
        activation=QuantSpec("int8", symmetric=True, granularity=PerTensor(), observer="minmax",
                             sink_tokens=1),
        reason="recipe w8a8_static_rotated"),
    passes=(SmoothQuant(alpha=0.5), HadamardRotate()),
    description="int8 weights per output channel; int8 activations per tensor, MinMax-calibrated "
                "(static), the first token of every sequence with a scale of its own; after "
                "SmoothQuant (alpha 0.5) and a Hadamard rotation (blocks of 128) of every "
                "down_proj input"))


RECIPES.add("w4a16_g128", Recipe(
    "w4a16_g128",
    LayerPrecision(weight=QuantSpec("int4", symmetric=True, granularity=PerGroup(128)),
                   reason="recipe w4a16_g128"),
    description="int4 weights in groups of 128 input features (symmetric); activations stay "
                "float. ONNX: blocked DequantizeLinear (opset 21), MatMulNBits in ONNX Runtime"))

RECIPES.add("w4a16_g128_int8_embed", RECIPES.get("w4a16_g128").replace(
    name="w4a16_g128_int8_embed", passes=(QuantizeEmbeddings(),),
    policies=(Rules((Rule("*lm_head", LayerPrecision(weight=INT8_WEIGHT),
                          name="lm_head int8"),)),),
    description="w4a16_g128, with the token embedding table and lm_head (tied in many small "
                "LLMs) stored as int8 per row instead of float: the smallest file"))

RECIPES.add("fp8_e4m3", Recipe(
    "fp8_e4m3",
    LayerPrecision(
        weight=QuantSpec("fp8_e4m3", symmetric=True, granularity=PerChannel(0)),
        activation=QuantSpec("fp8_e4m3", symmetric=True, granularity=PerTensor(),
                             observer="minmax"),
        reason="recipe fp8_e4m3"),
    description="fp8 e4m3 weights per output channel; fp8 e4m3 activations per tensor, "
                "MinMax-calibrated (static). ONNX: float8 Q/DQ (opset 19)"))


def resolve_recipe(recipe: str | Recipe | dict[str, Any]) -> Recipe:
    """A Recipe from a built-in or plugin name, a dict, or a Recipe."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, str):
        return RECIPES.get(recipe)
    raise TypeError(f"recipe must be a name, a dict or a qpass.Recipe, not {type(recipe).__name__}")
