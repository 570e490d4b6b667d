"""Perplexity of a causal LM (a torch module or an ONNX file) on fixed token windows.

Every window is scored on its own (no state carried between windows): the logits at
position t predict token t + 1, so a window of T tokens gives T - 1 predictions.
Per-token cross entropy is computed in float32 (upcast from lower precisions) and
summed in float64 over all windows; the result is ``exp(total_nll / n_predictions)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qpass.eval.ort import ort_session

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # ids: [1, T] int64 -> logits: [1, T, V]


def perplexity(
    model_or_onnx_path: nn.Module | str | Path,
    token_ids: torch.Tensor,
    window: int = 512,
    *,
    progress: bool = False,
    threads: int = 2,
) -> float:
    """exp(mean next-token NLL) of a causal LM over non-overlapping windows.

    token_ids: 1-D (cut into ``len // window`` windows of ``window`` tokens, the short tail
    dropped) or 2-D ``[n, T]`` (each row is a window; ``window`` is then not used).
    model_or_onnx_path: an ``nn.Module`` called as ``module(ids)`` with ``ids: [1, T]`` that
    returns logits ``[1, T, V]``, or the path of a ``.onnx`` file whose first input takes
    int64 ids ``[1, T]`` and whose first output is the logits. ``threads`` sets the ONNX
    Runtime intra-op threads; torch modules run with torch's own thread setting.
    """
    windows = as_windows(token_ids, window)
    run = logits_fn(model_or_onnx_path, threads)
    total_nll, count = 0.0, 0
    for ids in tqdm(windows, desc="perplexity", unit="window", disable=not progress):
        nll, n = window_nll(run(ids[None]), ids)
        total_nll, count = total_nll + nll, count + n
    return math.exp(total_nll / count)


def window_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL of one window and the number of predictions it made."""
    _check_logits(logits, ids)
    # logits: [T, V] predicts ids[1:]: [T - 1]
    nll = F.cross_entropy(logits[0, :-1].float(), ids[1:].to(logits.device), reduction="none")
    return float(nll.double().sum()), nll.numel()


def as_windows(token_ids: torch.Tensor, window: int) -> torch.Tensor:
    """token_ids: [N] or [n, T] -> windows: [n, T] int64 on the CPU."""
    if not isinstance(token_ids, torch.Tensor):
        token_ids = torch.as_tensor(token_ids)
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise TypeError(f"token_ids must hold integer token ids, got dtype {token_ids.dtype}")
    if token_ids.numel() == 0:
        raise ValueError(
            f"token_ids is empty (shape {tuple(token_ids.shape)}); pass at least one window "
            "of tokens, e.g. from qpass.eval.wikipedia_token_slices"
        )
    if token_ids.dim() == 1:
        if window < 2:
            raise ValueError(f"window must be >= 2 (one token predicts the next), got {window}")
        n = token_ids.numel() // window
        if n == 0:
            raise ValueError(
                f"token_ids has {token_ids.numel()} tokens, fewer than one window of {window}; "
                "pass more tokens or a smaller window"
            )
        return token_ids[: n * window].reshape(n, window).long().cpu()
    if token_ids.dim() == 2:
        if token_ids.shape[1] < 2:
            raise ValueError(
                f"each window (row) of token_ids needs >= 2 tokens, got shape "
                f"{tuple(token_ids.shape)}; pass [n, window] with window >= 2"
            )
        return token_ids.long().cpu()
    raise ValueError(
        f"token_ids must be 1-D [tokens] or 2-D [n, window], got shape {tuple(token_ids.shape)}"
    )


def logits_fn(model: nn.Module | str | Path, threads: int) -> LogitsFn:
    if isinstance(model, nn.Module):
        return _torch_logits_fn(model)
    if isinstance(model, str | Path):
        if Path(model).suffix.lower() != ".onnx":
            raise ValueError(
                f"a model given by path must be an .onnx file, got {str(model)!r}; "
                "pass an nn.Module or the path of an exported ONNX model"
            )
        return _onnx_logits_fn(model, threads)
    raise TypeError(
        f"perplexity needs an nn.Module or the path of a .onnx file, got {type(model).__name__}"
    )


def _torch_logits_fn(module: nn.Module) -> LogitsFn:
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")

    def run(ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(ids.to(device))

    return run


def _onnx_logits_fn(path: str | Path, threads: int) -> LogitsFn:
    session = ort_session(path, threads=threads)
    first, *rest = session.get_inputs()
    if first.type != "tensor(int64)":
        raise ValueError(
            f"ONNX model {str(path)!r}: first input {first.name!r} has type {first.type}, "
            "expected tensor(int64) token ids"
        )
    if rest:
        names = [i.name for i in session.get_inputs()]
        raise ValueError(
            f"ONNX model {str(path)!r} has inputs {names}; perplexity feeds only the first "
            "(token ids): export the model with input_ids as its only input"
        )

    def run(ids: torch.Tensor) -> torch.Tensor:
        (logits, *_) = session.run(None, {first.name: ids.numpy()})
        return torch.from_numpy(logits)

    return run


def _check_logits(logits: object, ids: torch.Tensor) -> None:
    """logits must be a tensor [1, T, V] for ids: [T]."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the model returned {type(logits).__name__}, expected one logits tensor "
            "[1, T, V]; wrap it so forward(input_ids) returns the logits "
            "(qpass.eval.load_model does this for the built-in models)"
        )
    if logits.dim() != 3 or logits.shape[0] != 1 or logits.shape[1] != ids.numel():
        raise ValueError(
            f"the model returned logits of shape {tuple(logits.shape)} for ids of shape "
            f"[1, {ids.numel()}], expected [1, {ids.numel()}, vocab_size]"
        )
    if int(ids.max()) >= logits.shape[2] or int(ids.min()) < 0:
        raise ValueError(
            f"token ids span [{int(ids.min())}, {int(ids.max())}] but the model has "
            f"{logits.shape[2]} logits per position; tokenize with the model's own tokenizer"
        )
