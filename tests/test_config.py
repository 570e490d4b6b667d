import pytest

import qpass
from qpass.config import (
    LayerPrecision,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    QuantSpec,
    Recipe,
)
from qpass.recipes import RECIPES, resolve_recipe
from qpass.registry import Registry


@pytest.mark.parametrize("name", list(RECIPES))
def test_builtin_recipes_round_trip_through_dicts(name):
    recipe = RECIPES.get(name)
    assert Recipe.from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()
    assert resolve_recipe(recipe.to_dict()) == recipe


def test_invalid_specs_name_the_field_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"QuantSpec.format='int9'.*int8, uint8, int4"):
        QuantSpec("int9")
    with pytest.raises(ValueError, match=r"PerToken\(\) only with dynamic=True"):
        QuantSpec(granularity=PerToken())
    with pytest.raises(ValueError, match=r"QuantSpec.symmetric=False.*float formats"):
        QuantSpec("fp8_e4m3", symmetric=False)
    with pytest.raises(ValueError, match=r"PerGroup.size=0"):
        PerGroup(0)
    with pytest.raises(ValueError, match=r"activation.granularity.*PerTensor\(\) for static"):
        LayerPrecision(weight=QuantSpec(), activation=QuantSpec(granularity=PerChannel(0)))
    with pytest.raises(ValueError, match=r"Recipe.precision.weight"):
        Recipe("x", LayerPrecision(activation=QuantSpec(granularity=PerTensor())))


def test_unknown_recipe_key_is_rejected_with_the_closest_match():
    d = RECIPES.get("w8a16").to_dict()
    d["keep_flaot"] = d.pop("keep_float")
    with pytest.raises(ValueError, match=r"recipe.keep_flaot.*did you mean 'keep_float'"):
        Recipe.from_dict(d)
    d = RECIPES.get("w8a16").to_dict()
    d["precision"]["weight"]["granularty"] = "per_channel"
    with pytest.raises(ValueError, match=r"recipe.precision.weight.granularty"):
        Recipe.from_dict(d)


def test_registry_lists_known_names_and_suggests():
    reg: Registry[int] = Registry("widget", "qpass.widgets")
    reg.add("alpha", 1)
    with pytest.raises(KeyError, match=r"unknown widget 'alpah'. Known widgets: alpha.*'alpha'"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", 2)


def test_resolve_recipe_rejects_other_types():
    with pytest.raises(TypeError, match="recipe must be a name, a dict or a qpass.Recipe"):
        qpass.resolve_recipe(42)


def test_layer_precision_outlier_fields_validate_and_round_trip():
    w = QuantSpec(granularity=PerChannel(0))
    a = QuantSpec(granularity=PerToken(), dynamic=True)
    p = LayerPrecision(w, a, outlier_threshold=6.0, outlier_columns=[9, 2, 2])
    assert p.outlier_columns == (2, 9)
    assert p.to_dict()["outlier_columns"] == [2, 9]
    assert LayerPrecision.from_dict(p.to_dict()) == p
    dyn = LayerPrecision(w, a, outlier_threshold=4.0, outlier_mode="dynamic")
    assert LayerPrecision.from_dict(dyn.to_dict()) == dyn
    assert "outlier_threshold" not in LayerPrecision(w).to_dict()
    with pytest.raises(ValueError, match=r"LayerPrecision.outlier_threshold=0.*positive finite"):
        LayerPrecision(w, a, outlier_threshold=0)
    with pytest.raises(ValueError, match=r"LayerPrecision.outlier_mode='sometimes'"):
        LayerPrecision(w, a, outlier_threshold=6.0, outlier_mode="sometimes")
    with pytest.raises(ValueError, match=r"LayerPrecision.weight=None.*outlier_threshold"):
        LayerPrecision(outlier_threshold=6.0)
    static = QuantSpec(granularity=PerTensor())
    with pytest.raises(ValueError, match=r"LayerPrecision.activation.dynamic=False.*"
                                         r"outlier_mode='dynamic'"):
        LayerPrecision(w, static, outlier_threshold=6.0, outlier_mode="dynamic")
    # a static split calibrates its static range with the outlier columns zeroed
    split = LayerPrecision(w, static, outlier_threshold=6.0, outlier_columns=(2,))
    assert split.activation == static
    with pytest.raises(ValueError, match=r"LayerPrecision.outlier_columns=\(1,\).*None unless"):
        LayerPrecision(w, a, outlier_columns=(1,))
    with pytest.raises(ValueError, match=r"LayerPrecision.outlier_columns=\(-1,\)"):
        LayerPrecision(w, a, outlier_threshold=6.0, outlier_columns=(-1,))
