import json
import pickle

import pytest
import torch

import qpass
from qpass.graph_json import GraphFormatError
from qpass.save import load, save
from tests.toy_models import tiny_lm, token_batches


def load_without_pickle(folder):
    """qpass.load with every unpickling entry point made to raise."""
    def refuse(*args, **kwargs):
        raise AssertionError("qpass.load must not unpickle")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("load", "loads", "Unpickler"):
            mp.setattr(pickle, name, refuse)
        mp.setattr(torch, "load", refuse)
        mp.setattr(torch.serialization, "load", refuse)
        return load(folder)


def _quantized(recipe: str):
    batches = token_batches(3)
    return qpass.quantize(tiny_lm(), recipe, batches, batches[0], progress=False)


@pytest.mark.parametrize("recipe", ["w8a16", "w8a8_dynamic", "w8a8_static"])
def test_save_load_is_bit_exact_and_never_unpickles(tmp_path, recipe):
    qmodel = _quantized(recipe)
    save(qmodel, tmp_path / "m")
    loaded = load_without_pickle(tmp_path / "m")
    for x in token_batches(3, seed=7):
        assert torch.equal(qmodel(x), loaded(x))
    state, back = qmodel.meta["qpass"], loaded.meta["qpass"]
    assert back.recipe == state.recipe and back.precisions == state.precisions
    assert back.fqns == state.fqns and back.phase == "converted"
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_loaded_model_exports_like_the_original(tmp_path):
    from qpass.eval.similarity import output_similarity

    qmodel = _quantized("w8a8_static")
    loaded = load(save(qmodel, tmp_path / "m"))
    x = token_batches(1)[0]
    path = qpass.export_onnx(loaded, (x,), tmp_path / "m.onnx")
    sim = output_similarity(qmodel, path, [(x,)])
    assert sim.max_abs_diff < 1e-4


def test_loading_refuses_unknown_targets_and_missing_files(tmp_path):
    folder = save(_quantized("w8a16"), tmp_path / "m")
    meta = json.loads((folder / "qpass.json").read_text())
    node = next(n for n in meta["graph"]["nodes"] if n["op"] == "call_function")
    node["target"] = "py:os.system"
    (folder / "qpass.json").write_text(json.dumps(meta))
    with pytest.raises(GraphFormatError, match="target 'py:os.system' does not exist"):
        load(folder)
    with pytest.raises(FileNotFoundError, match="qpass.json' does not exist"):
        load(tmp_path / "nowhere")


def test_save_refuses_what_it_cannot_rebuild(tmp_path):
    batches = token_batches(2)
    prepared = qpass.prepare(tiny_lm(), "w8a8_static", batches[0])  # observers are modules
    with pytest.raises(GraphFormatError, match="submodule 'qpass_observer_0' of type "
                                               "ObserverModule"):
        save(prepared, tmp_path / "p")
    with pytest.raises(TypeError, match="needs a torch.fx.GraphModule"):
        save(torch.nn.Linear(2, 2), tmp_path / "l")


@pytest.mark.real
def test_smollm2_save_load_bit_exact_at_another_length(smollm2, tmp_path):
    from qpass.eval import wikipedia_token_slices

    calib, evals = wikipedia_token_slices(smollm2.tokenizer, calib_windows=2, eval_windows=1,
                                          window=64)
    example = (calib[:2],)
    gm = qpass.capture(smollm2.module, example, dynamic_shapes=smollm2.dynamic_shapes)
    qmodel = qpass.quantize(gm, "w8a8_static", [(c[None],) for c in calib], example,
                            progress=False)
    loaded = load_without_pickle(save(qmodel, tmp_path / "smol"))
    x = evals[:1, :37]  # a length the model was not captured or calibrated with
    assert torch.equal(qmodel(x), loaded(x))
