"""Save and load a quantized GraphModule without pickle: safetensors + JSON.

    qpass.save(qmodel, "exports/smollm2-w8a8")     # model.safetensors + qpass.json
    qmodel = qpass.load("exports/smollm2-w8a8")     # bit-identical outputs

The folder holds ``model.safetensors`` (every tensor the graph reads: int8/fp8 weights,
scales, zero points and the float weights that stay float) and ``qpass.json`` (the FX graph
node by node, see ``qpass.graph_json``; the recipe; each site's precision and module FQN;
the input signature). Loading reads JSON and safetensors only: nothing is unpickled and no
Python code named by the file is imported, so a saved model from an untrusted source cannot
run code when loaded (ops are looked up in ``torch.ops`` and the ``operator``/``math``
modules).

Why serialize the FX graph rather than re-capture the model and re-apply the recipe: the
saved folder does not need the original model, its package, calibration data or a
deterministic replay of data-driven passes (SmoothQuant's alpha search, sensitivity
policies), and it loads in seconds; torch.export's own serializer would need a re-export of
the converted graph and writes its tensors with ``torch.save`` (pickle). The price: only
graphs made of ATen/registered ops can be saved, which is what ``qpass.capture`` produces.
torch.export's input guards (a ``_guards_fn`` module) are not saved; qpass checks inputs
against the recorded signature when calibrating, and ops fail on impossible shapes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from qpass.config import LayerPrecision, Recipe
from qpass.graph_json import GraphFormatError, graph_to_json, json_to_graph
from qpass.state import META_KEY, InputSig, QpassState

log = logging.getLogger(__name__)
SAVE_FORMAT = 1
TENSORS_FILE = "model.safetensors"
META_FILE = "qpass.json"


def _guard_nodes(gm: fx.GraphModule) -> set[str]:
    """call_module nodes of torch.export's input guards (no outputs, re-checkable)."""
    return {n.name for n in gm.graph.nodes if n.op == "call_module"
            and type(gm.get_submodule(n.target)).__name__ == "GuardsFn"}


def _tensors(gm: fx.GraphModule) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every tensor attribute by dotted name, and what it is (parameter / buffer / alias)."""
    found: dict[str, torch.Tensor] = {}
    kinds: dict[str, dict[str, Any]] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        found[name], kinds[name] = p, {"kind": "parameter", "requires_grad": p.requires_grad}
    for name, b in gm.named_buffers(remove_duplicate=False):
        found[name], kinds[name] = b, {"kind": "buffer"}
    for prefix, mod in gm.named_modules():
        if not isinstance(mod, fx.GraphModule):
            continue
        for n in mod.graph.nodes:
            name = f"{prefix}.{n.target}" if prefix else str(n.target)
            if n.op == "get_attr" and name not in found:
                obj = mod
                for part in str(n.target).split("."):
                    obj = getattr(obj, part)
                if isinstance(obj, torch.Tensor):
                    found[name], kinds[name] = obj, {"kind": "attribute"}
    first: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    for name, t in found.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in first:
            kinds[name]["same_as"] = first[key]
            continue
        if key is not None:
            first[key] = name
        unique[name] = t.detach().contiguous()
    return unique, kinds


def _state_to_json(state: QpassState) -> dict[str, Any]:
    try:
        reports = json.loads(json.dumps(state.reports, default=str))
    except (TypeError, ValueError):
        reports = {}
    return {"recipe": state.recipe.to_dict(),
            "precisions": {k: p.to_dict() for k, p in state.precisions.items()},
            "fqns": state.fqns, "observers": state.observers,
            "inputs": None if state.inputs is None else [
                {"shape": list(s.shape), "dtype": str(s.dtype).removeprefix("torch.")}
                for s in state.inputs],
            "calibrated_batches": state.calibrated_batches, "phase": state.phase,
            "reports": reports}


def _state_from_json(d: dict[str, Any]) -> QpassState:
    inputs = None if d["inputs"] is None else tuple(
        InputSig(tuple(s["shape"]), getattr(torch, s["dtype"])) for s in d["inputs"])
    return QpassState(
        recipe=Recipe.from_dict(d["recipe"]),
        precisions={k: LayerPrecision.from_dict(p, f"precisions.{k}")
                    for k, p in d["precisions"].items()},
        fqns=d["fqns"], inputs=inputs, observers=d["observers"],
        calibrated_batches=d["calibrated_batches"], reports=d["reports"], phase=d["phase"])


def save(gm: fx.GraphModule, folder: str | os.PathLike) -> Path:
    """Write ``gm`` (a converted qpass model, or any torch.export-captured GraphModule) to
    ``folder`` as ``model.safetensors`` + ``qpass.json``; returns the folder."""
    from safetensors.torch import save_file

    from qpass import __version__

    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"qpass.save needs a torch.fx.GraphModule (what qpass.convert returns), "
                        f"got {type(gm).__name__}")
    folder = Path(folder)
    skip = _guard_nodes(gm)
    subgraphs = {}
    for name, mod in gm.named_modules():
        if name and isinstance(mod, fx.GraphModule):
            subgraphs[name] = graph_to_json(mod)
        elif name and type(mod) is not torch.nn.Module and type(mod).__name__ != "GuardsFn":
            raise GraphFormatError(
                f"cannot save submodule {name!r} of type {type(mod).__name__}: qpass saves graphs "
                "whose modules are plain containers or GraphModules (what torch.export makes). "
                "Convert the model (observers are removed then) or re-capture it")
    tensors, kinds = _tensors(gm)
    state = gm.meta.get(META_KEY)
    meta = {"format": SAVE_FORMAT, "qpass_version": __version__, "torch_version": torch.__version__,
            "graph": graph_to_json(gm, skip), "subgraphs": subgraphs, "tensors": kinds,
            "training": gm.training, "capture": gm.meta.get("qpass_capture"),
            "state": None if state is None else _state_to_json(state)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": "pt"})
    (folder / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    log.info("qpass.save: %d tensors, %d nodes -> %s", len(tensors), len(meta["graph"]["nodes"]),
             folder)
    return folder


def _place(root: torch.nn.Module, name: str, t: torch.Tensor, info: dict[str, Any]) -> None:
    owner_path, _, attr = name.rpartition(".")
    owner = root
    for part in owner_path.split(".") if owner_path else ():
        if not hasattr(owner, part):
            owner.add_module(part, torch.nn.Module())
        owner = getattr(owner, part)
    if info["kind"] == "parameter":
        owner.register_parameter(attr, torch.nn.Parameter(t, info.get("requires_grad", False)))
    elif info["kind"] == "buffer":
        owner.register_buffer(attr, t)
    else:
        setattr(owner, attr, t)


def load(folder: str | os.PathLike) -> fx.GraphModule:
    """The GraphModule saved in ``folder`` by ``qpass.save``; never unpickles."""
    from safetensors.torch import load_file

    import qpass.ops  # noqa: F401  (registers the qpass:: ops the graph calls)

    folder = Path(folder)
    meta_path, tensor_path = folder / META_FILE, folder / TENSORS_FILE
    for path in (meta_path, tensor_path):
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} does not exist; qpass.load needs a folder "
                                    f"written by qpass.save ({META_FILE} + {TENSORS_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != SAVE_FORMAT:
        raise GraphFormatError(f"{str(meta_path)!r} has save format {meta.get('format')!r}; this "
                               f"qpass ({SAVE_FORMAT}) cannot read it")
    stored = load_file(str(tensor_path))
    root = torch.nn.Module()
    for name, info in meta["tensors"].items():
        t = stored[info["same_as"]] if "same_as" in info else stored.get(name)
        if t is None:
            raise GraphFormatError(f"{str(tensor_path)!r} lacks tensor {name!r}; the file is "
                                   "damaged or from another save")
        _place(root, name, t, info)
    for name in sorted(meta["subgraphs"], key=lambda n: -n.count(".")):
        owner = root.get_submodule(name) if _has_module(root, name) else torch.nn.Module()
        sub = fx.GraphModule(owner, json_to_graph(meta["subgraphs"][name], f"subgraph {name}"))
        parent, _, attr = name.rpartition(".")
        (root.get_submodule(parent) if parent else root).add_module(attr, sub)
    gm = fx.GraphModule(root, json_to_graph(meta["graph"], f"graph of {str(meta_path)!r}"))
    gm.train(meta["training"])
    if meta.get("capture"):
        gm.meta["qpass_capture"] = meta["capture"]
    if meta.get("state") is not None:
        gm.meta[META_KEY] = _state_from_json(meta["state"])
    return gm


def _has_module(root: torch.nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True
