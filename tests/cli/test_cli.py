"""The qpass command end to end on a toy model (tests.cli.toy_factory), and its errors."""

import random

import pytest

from qpass.cli import main
from qpass.recipe_files import load_recipe
from qpass.recipes import RECIPES

TOY = "tests.cli.toy_factory:load"


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    random.seed(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "scales"]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(" ".join(random.choices(words, k=12)) for _ in range(300)))
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QPASS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def toy_args(text, *extra):
    return ["--quiet", "--model", TOY, "--calib-text", str(text), "--eval-text", str(text),
            "--window", "64", "--calib-windows", "2", "--eval-windows", "2", *extra]


@pytest.fixture(scope="module")
def quantized(text, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QPASS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        code = main(["quantize", *toy_args(text, "--recipe", "w8a8_static", "--out", str(out))])
    return code, out


def test_quantize_writes_every_output(quantized, capsys):
    code, out = quantized
    assert code == 0
    stem = out / "toy-lm-w8a8_static"
    for path in (stem.with_suffix(".onnx"), stem / "model.safetensors", stem / "qpass.json",
                 out / "toy-lm-w8a8_static.report.html", out / "toy-lm-w8a8_static.recipe.yaml"):
        assert path.exists(), path
    assert load_recipe(out / "toy-lm-w8a8_static.recipe.yaml") == RECIPES.get("w8a8_static")


def test_eval_reads_saved_models_and_onnx(quantized, text, capsys):
    _, out = quantized
    stem = out / "toy-lm-w8a8_static"
    code = main(["eval", "--quiet", "--model", TOY, "--eval-text", str(text), "--window", "64",
                 "--windows", "2", "--saved", str(stem), "--onnx", f"{stem}.onnx"])
    assert code == 0
    table = capsys.readouterr().out
    rows = [r for r in table.splitlines() if r.startswith("| ") and "PPL" not in r]
    ppl = [float(r.split("|")[2]) for r in rows]
    assert len(ppl) == 3 and abs(ppl[1] - ppl[2]) / ppl[1] < 1e-3  # torch vs ONNX Runtime
    assert abs(ppl[1] - ppl[0]) / ppl[0] < 0.05  # int8 stays close to float


def test_bench_times_onnx_files(quantized, capsys):
    _, out = quantized
    onnx = str(out / "toy-lm-w8a8_static.onnx")
    assert main(["bench", "--quiet", onnx, onnx, "--window", "16", "--repeats", "1"]) == 0
    assert "speed vs first" in capsys.readouterr().out


def test_dump_recipe_round_trips(tmp_path, capsys):
    target = tmp_path / "r.toml"
    assert main(["quantize", "--recipe", "w8a8_dynamic", "--dump-recipe", str(target)]) == 0
    assert load_recipe(target) == RECIPES.get("w8a8_dynamic")
    assert main(["quantize", "--recipe", str(target), "--dump-recipe", "-"]) == 0
    assert "name: w8a8_dynamic" in capsys.readouterr().out


def test_recipes_lists_presets_and_plugins(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("w8a8_static", "smoothquant", "keep_float", "minmax", "smollm2-135m"):
        assert f"  {name} " in out
    assert main(["recipes", "--show", "w8a16", "--format", "json"]) == 0
    assert '"name": "w8a16"' in capsys.readouterr().out


def test_formats_and_report_on_the_toy(text, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["formats", *toy_args(text)[:9], "--out", str(tmp_path / "f")]) == 0
    assert "int8 minmax" in capsys.readouterr().out
    assert (tmp_path / "f" / "formats.png").stat().st_size > 1000
    code = main(["report", *toy_args(text, "--recipe", "w8a16", "--out", str(tmp_path / "r"))])
    assert code == 0 and (tmp_path / "r" / "toy-lm-w8a16.report.html").is_file()


@pytest.mark.parametrize("argv, message", [
    (["quantise"], "invalid choice: 'quantise'"),
    (["quantize", "--recipie", "x"], "unrecognized arguments: --recipie"),
    (["eval", "--windows", "many"], "argument --windows: invalid int value: 'many'"),
])
def test_bad_command_lines_exit_2_like_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, code, message", [
    (["quantize", "--model", "smollm3"], 3, "unknown model 'smollm3'"),
    (["quantize", "--model", "no_such_pkg.models:load"], 3, "'no_such_pkg.models' cannot be "
                                                             "imported"),
    (["quantize", "--model", "tests.cli.toy_factory:nope"], 3, "has no function 'nope'"),
    (["quantize", "--model", "tests.cli.toy_factory:not_a_loaded_model"], 2,
     "returned Linear; it must return a qpass.eval.LoadedModel"),
    (["quantize", "--recipe", "missing.yaml"], 3, "recipe file 'missing.yaml' does not exist"),
    (["quantize", "--recipe", "w8a8_statc"], 2, "Did you mean 'w8a8_static'"),
    (["eval", "--saved", "nowhere"], 3, "--saved 'nowhere' does not exist"),
    (["bench", "nowhere.onnx"], 3, "ONNX file 'nowhere.onnx' does not exist"),
])
def test_bad_input_gets_a_clear_error_and_exit_code(argv, code, message, capsys, tmp_path,
                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parents[2]))
    assert main([*argv, "--quiet"] if argv[0] != "bench" else argv) == code
    assert message in capsys.readouterr().err


def test_misspelt_recipe_key_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: r\nprecision:\n  weight: {format: int8, symetric: true}\n")
    assert main(["quantize", "--quiet", "--recipe", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key recipe.precision.weight.symetric" in err
    assert "did you mean 'symmetric'" in err


def test_missing_calibration_file_exits_3(tmp_path, capsys, text):
    argv = toy_args(text, "--out", str(tmp_path))
    argv[argv.index("--calib-text") + 1] = str(tmp_path / "nope.txt")
    assert main(["quantize", *argv]) == 3
    assert "calibration text file" in capsys.readouterr().err


def test_unwritable_output_folder_exits_4(tmp_path, capsys, text):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a folder cannot be made below a file, even as root
    assert main(["quantize", *toy_args(text, "--out", str(blocker / "out"))]) == 4
    assert "cannot be written" in capsys.readouterr().err
