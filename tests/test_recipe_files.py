from pathlib import Path

import pytest

import qpass
from qpass.recipe_files import (
    RecipeFileError,
    dump_recipe,
    load_recipe,
    recipe_from_data,
    recipe_to_text,
)
from qpass.recipes import RECIPES

EXAMPLES = Path(__file__).parent.parent / "examples" / "recipes"


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
@pytest.mark.parametrize("name", ["w8a16", "w8a8_dynamic", "w8a8_static"])
def test_presets_round_trip_through_every_format(tmp_path, name, suffix):
    recipe = RECIPES.get(name).replace(passes=(qpass.SmoothQuant(alpha=0.6),))
    path = dump_recipe(recipe, tmp_path / f"r{suffix}")
    assert load_recipe(path) == recipe
    assert load_recipe(str(path)) == recipe


def test_a_preset_name_is_not_a_file():
    assert load_recipe("w8a8_static") is RECIPES.get("w8a8_static")
    with pytest.raises(KeyError, match="unknown recipe 'w8a8_statik'.*Did you mean 'w8a8_static'"):
        load_recipe("w8a8_statik")


def test_misspelt_key_names_its_path_the_allowed_keys_and_the_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nprecision:\n  weight: {format: int8, granularty: per_channel}\n")
    with pytest.raises(RecipeFileError, match=r"bad\.yaml.*unknown key recipe\.precision\.weight"
                       r"\.granularty; allowed keys: dynamic, format, granularity, observer, "
                       r"sink_tokens, symmetric; did you mean 'granularity'"):
        load_recipe(path)


def test_misspelt_pass_field_and_unknown_pass_are_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[[passes]]\ntype = "smoothquant"\nalhpa = 0.5\n')
    with pytest.raises(RecipeFileError, match=r"recipe\.passes\[0\]\.alhpa.*did you mean 'alpha'"):
        load_recipe(path)
    with pytest.raises(RecipeFileError, match=r"unknown pass 'smothquant'.*'smoothquant'"):
        recipe_from_data({"name": "x", "passes": [{"type": "smothquant"}]}, "x.yaml")


def test_syntax_errors_and_non_mappings_say_which_file(tmp_path):
    (tmp_path / "a.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeFileError, match=r"a\.yaml' is not valid YAML"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "b.json").write_text("[1, 2]")
    with pytest.raises(RecipeFileError, match=r"b\.json' must hold a mapping.*got list"):
        load_recipe(tmp_path / "b.json")
    with pytest.raises(FileNotFoundError, match=r"recipe file .*missing\.yaml' does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_toml_refuses_a_recipe_it_cannot_hold():
    recipe = RECIPES.get("w8a8_dynamic").replace(passes=(qpass.SmoothQuant(alpha=None),))
    with pytest.raises(RecipeFileError, match="TOML has no null.*write it as .yaml or .json"):
        recipe_to_text(recipe, ".toml")
    assert recipe_from_data(__import__("yaml").safe_load(recipe_to_text(recipe, ".yaml")),
                            "-") == recipe


def test_example_recipe_files_load():
    yaml_recipe = load_recipe(EXAMPLES / "w8a8_smoothquant.yaml")
    assert yaml_recipe.passes == (qpass.SmoothQuant(alpha=0.5),)
    assert yaml_recipe.precision == RECIPES.get("w8a8_dynamic").precision.__class__(
        weight=RECIPES.get("w8a8_dynamic").precision.weight,
        activation=RECIPES.get("w8a8_dynamic").precision.activation,
        reason="recipe w8a8_smoothquant")
    toml_recipe = load_recipe(EXAMPLES / "w8a8_static_percentile.toml")
    assert toml_recipe.precision.activation.observer == "percentile"
