"""QDQ ONNX export of a converted qpass GraphModule (or any float model, for comparison)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import onnx
import torch

from qpass.capture import as_tuple
from qpass.export import diagnose
from qpass.export.formats import check_opset, pack_int4_weights, set_opset
from qpass.export.profiles import EXPORT_PROFILES, ExportProfile, get_profile
from qpass.export.translate import TRANSLATIONS
from qpass.export.validate import ExportValidationError, validate
from qpass.state import META_KEY

log = logging.getLogger(__name__)

OPSET = 21  # blocked (per-group) DequantizeLinear and INT4 need 21; see export.formats
# onnxruntime before 1.32 reads IR version <= 13 while onnx 1.23 writes 14 by default;
# IR 10 is the first that allows opset 21 and the newest every supported runtime reads.
IR_VERSION = 10
PROFILES = EXPORT_PROFILES  # "ort", "plain", "tensorrt" and plugins; see export.profiles
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB


def _metadata(gm: torch.nn.Module, profile: str) -> dict[str, str]:
    from qpass import __version__

    props = {"qpass.version": __version__, "qpass.export_profile": profile}
    state = getattr(gm, "meta", {}).get(META_KEY) if hasattr(gm, "meta") else None
    if state is not None:
        props["qpass.recipe"] = json.dumps(state.recipe.to_dict(), sort_keys=True)
        props["qpass.float_sites"] = json.dumps(sorted(
            state.fqns[n] or n for n, p in state.precisions.items() if p.is_float))
    return props


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary file next to ``path`` and rename it into place, so a failed
    write leaves nothing half-written behind."""
    size = model.ByteSize() if model.ByteSize() < 2**31 - 1 else 2**31
    data_file = path.with_name(path.name + ".data")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if data_file.exists():
        data_file.unlink()
    try:
        if size >= EXTERNAL_DATA_BYTES:
            onnx.save_model(model, tmp, save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_file.name,
                            size_threshold=1024)
        else:
            onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        for leftover in (tmp, data_file):
            leftover.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(f"could not write the ONNX model to {str(path)!r}: {exc}; nothing "
                          "was left behind. Free disk space or choose another location") from exc
        raise


def _check(model: onnx.ModelProto, profile: ExportProfile) -> None:
    """The profile's validator on the exported model: errors raise, warnings are logged."""
    found = validate(model, profile)
    for v in found:
        if v.severity == "warning":
            log.warning("qpass export (%s profile): %s", profile.name, v)
    errors = [v for v in found if v.severity == "error"]
    if errors:
        raise ExportValidationError(profile.name, errors, "the exported model")


def export_onnx(
    qmodel: torch.nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    dynamic_shapes: Any = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    profile: str | ExportProfile = "ort",
    opset: int = OPSET,
    check: bool = True,
) -> Path:
    """Write ``qmodel`` as QDQ ONNX (opset 21 unless ``opset`` says 18-20) to ``path``.

    Integer weights stay int8 initializers behind DequantizeLinear, laid out [K, N] so the
    runtime can fuse them into integer MatMul kernels; activations get QuantizeLinear /
    DequantizeLinear pairs. The recipe and the qpass version go into ``metadata_props``.
    ``profile="ort"`` moves int8 tensors to uint8 (bit-exact, for exact fast kernels; see
    ``qpass.export.ort_profile``); ``profile="plain"`` writes the graph as converted;
    ``profile="tensorrt"`` follows TensorRT's explicit quantization rules and refuses what
    TensorRT cannot run (``qpass.export.tensorrt_profile``). Layers the profile cannot express
    and opsets too old for the recipe's formats are refused before exporting, naming them.
    With ``check=True`` the written model must pass the profile's validator
    (``qpass.export.validate``). Models over ~1.8 GB are written with external data
    (``<path>.data``). The path is written atomically: a failed export leaves nothing there.
    """
    prof = get_profile(profile)
    state = diagnose.qpass_state(qmodel)
    check_opset(opset, state.precisions if state else {}, state.fqns if state else {})
    diagnose.check_profile(qmodel, prof)
    path = Path(path)
    diagnose.check_writable(path)
    args = as_tuple(example_inputs)
    if isinstance(qmodel, torch.fx.GraphModule):
        qmodel = prof.lower(qmodel)
    try:
        program = torch.onnx.export(
            qmodel, args, dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic_shapes,
            custom_translation_table=TRANSLATIONS, input_names=input_names,
            output_names=output_names, external_data=False, optimize=True, verbose=False,
        )
    except Exception as exc:
        unsupported = diagnose.unsupported_op_error(exc, qmodel)
        if unsupported is not None:
            raise unsupported from exc
        raise RuntimeError(
            f"qpass could not export {type(qmodel).__name__} to ONNX: {exc}\n"
            "If an op is unsupported, keep its layer float with the recipe's keep_float, or "
            "report the op to qpass"
        ) from exc
    model = program.model_proto
    model.ir_version = IR_VERSION
    pack_int4_weights(model)
    prof.finish(model)
    set_opset(model, opset)
    for key, value in _metadata(qmodel, prof.name).items():
        model.metadata_props.add(key=key, value=value)
    if check:
        _check(model, prof)
    _save(model, path)
    log.info("qpass: wrote %s", path)
    return path
