"""QDQ ONNX export of a converted qpass GraphModule (or any float model, for comparison)."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import onnx
import torch

from qpass.capture import as_tuple
from qpass.export.ort_lowering import fuse_dynamic_matmuls
from qpass.export.ort_profile import int8_to_uint8
from qpass.export.translate import TRANSLATIONS
from qpass.state import META_KEY

log = logging.getLogger(__name__)

OPSET = 21  # blocked (per-group) DequantizeLinear and INT4 need 21
# onnxruntime before 1.32 reads IR version <= 13 while onnx 1.23 writes 14 by default;
# IR 10 is the first that allows opset 21 and the newest every supported runtime reads.
IR_VERSION = 10
PROFILES = ("ort", "plain")
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB


def _metadata(gm: torch.nn.Module) -> dict[str, str]:
    from qpass import __version__

    props = {"qpass.version": __version__}
    state = getattr(gm, "meta", {}).get(META_KEY) if hasattr(gm, "meta") else None
    if state is not None:
        props["qpass.recipe"] = json.dumps(state.recipe.to_dict(), sort_keys=True)
        props["qpass.float_sites"] = json.dumps(sorted(
            state.fqns[n] or n for n, p in state.precisions.items() if p.is_float))
    return props


def _save(model: onnx.ModelProto, path: Path) -> None:
    size = model.ByteSize() if model.ByteSize() < 2**31 - 1 else 2**31
    data_file = path.with_name(path.name + ".data")
    if data_file.exists():
        data_file.unlink()
    if size >= EXTERNAL_DATA_BYTES:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file.name, size_threshold=1024)
    else:
        onnx.save_model(model, path)


def export_onnx(
    qmodel: torch.nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    dynamic_shapes: Any = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    profile: str = "ort",
) -> Path:
    """Write ``qmodel`` as QDQ ONNX (opset 21) to ``path`` and return the path.

    Integer weights stay int8 initializers behind DequantizeLinear, laid out [K, N] so the
    runtime can fuse them into integer MatMul kernels; activations get QuantizeLinear /
    DequantizeLinear pairs. The recipe and the qpass version go into ``metadata_props``.
    ``profile="ort"`` moves int8 tensors to uint8 (bit-exact, for exact fast kernels; see
    ``qpass.export.ort_profile``); ``profile="plain"`` writes the graph as converted.
    Models over ~1.8 GB are written with external data (``<path>.data``).
    """
    if profile not in PROFILES:
        raise ValueError(f"export profile {profile!r} is not valid; allowed: {', '.join(PROFILES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = as_tuple(example_inputs)
    if profile == "ort" and isinstance(qmodel, torch.fx.GraphModule):
        lowered = copy.deepcopy(qmodel)
        if fuse_dynamic_matmuls(lowered):
            qmodel = lowered
    try:
        program = torch.onnx.export(
            qmodel, args, dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic_shapes,
            custom_translation_table=TRANSLATIONS, input_names=input_names,
            output_names=output_names, external_data=False, optimize=True, verbose=False,
        )
    except Exception as exc:
        raise RuntimeError(
            f"qpass could not export {type(qmodel).__name__} to ONNX: {exc}\n"
            "If an op is unsupported, keep its layer float with the recipe's keep_float, or "
            "report the op to qpass"
        ) from exc
    model = program.model_proto
    model.ir_version = IR_VERSION
    if profile == "ort":
        int8_to_uint8(model)
    for key, value in _metadata(qmodel).items():
        model.metadata_props.add(key=key, value=value)
    _save(model, path)
    log.info("qpass: wrote %s", path)
    return path
