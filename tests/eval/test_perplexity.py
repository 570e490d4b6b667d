from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from qpass.eval import perplexity, wikipedia_token_slices

VOCAB = 50


class ToyCausalLM(nn.Module):
    """ids: [1, T] -> logits: [1, T, V]; position t sees tokens 0..t (a running mean)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)  # [1, T, D]
        positions = torch.arange(1, ids.shape[1] + 1, dtype=h.dtype)
        h = h.cumsum(1) / positions[:, None]
        return self.head(torch.tanh(self.mix(h)))


class Wrapped(nn.Module):
    def __init__(self, inner: nn.Module, post) -> None:
        super().__init__()
        self.inner, self.post = inner, post

    def forward(self, ids: torch.Tensor):
        return self.post(self.inner(ids))


@pytest.fixture(scope="module")
def toy() -> ToyCausalLM:
    torch.manual_seed(0)
    return ToyCausalLM().eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (5 * 16 + 7,), generator=torch.Generator().manual_seed(1))


def reference_perplexity(model: nn.Module, windows: torch.Tensor) -> float:
    """By hand, all in float64."""
    nlls = []
    with torch.no_grad():
        for w in windows:
            logp = model(w[None])[0].double().log_softmax(-1)  # [T, V]
            nlls.append(-logp[torch.arange(len(w) - 1), w[1:]])
    return math.exp(torch.cat(nlls).mean().item())


def test_matches_float64_reference(toy, ids):
    expected = reference_perplexity(toy, ids[: 5 * 16].reshape(5, 16))
    assert perplexity(toy, ids, window=16) == pytest.approx(expected, rel=1e-6)


def test_1d_and_2d_agree_and_tail_is_dropped(toy, ids):
    from_1d = perplexity(toy, ids, window=16)
    assert perplexity(toy, ids[: 5 * 16].reshape(5, 16)) == from_1d
    assert perplexity(toy, ids[: 5 * 16], window=16) == from_1d
    assert perplexity(toy, ids, window=8) != from_1d  # windows are scored independently


def test_progress_bar_runs(toy, ids):
    assert perplexity(toy, ids, window=16, progress=True) == perplexity(toy, ids, window=16)


@pytest.mark.parametrize(
    ("token_ids", "window", "error", "match"),
    [
        (torch.zeros(0, dtype=torch.long), 16, ValueError, "empty"),
        (torch.zeros(2, 0, dtype=torch.long), 16, ValueError, "empty"),
        (torch.zeros(40, dtype=torch.long), 1, ValueError, "window must be >= 2"),
        (torch.zeros(4, 1, dtype=torch.long), 16, ValueError, ">= 2 tokens"),
        (torch.zeros(10, dtype=torch.long), 16, ValueError, "10 tokens, fewer than one window"),
        (torch.zeros(2, 2, 8, dtype=torch.long), 16, ValueError, "1-D .* or 2-D"),
        (torch.zeros(40), 16, TypeError, "integer token ids"),
    ],
)
def test_bad_token_ids(toy, token_ids, window, error, match):
    with pytest.raises(error, match=match):
        perplexity(toy, token_ids, window=window)


def test_bad_model_outputs(toy, ids):
    with pytest.raises(ValueError, match=r"shape \(16, 50\).*expected \[1, 16, vocab_size\]"):
        perplexity(Wrapped(toy, lambda x: x[0]), ids, window=16)
    with pytest.raises(TypeError, match="returned tuple, expected one logits tensor"):
        perplexity(Wrapped(toy, lambda x: (x,)), ids, window=16)
    high = torch.full((32,), 20)
    with pytest.raises(ValueError, match=r"span \[20, 20\].*10 logits.*own tokenizer"):
        perplexity(Wrapped(toy, lambda x: x[..., :10]), high, window=16)


def test_bad_model_argument(ids, tmp_path):
    with pytest.raises(ValueError, match="must be an .onnx file"):
        perplexity(str(tmp_path / "model.pt"), ids, window=16)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        perplexity(tmp_path / "missing.onnx", ids, window=16)
    with pytest.raises(TypeError, match="got int"):
        perplexity(3, ids, window=16)


@pytest.fixture(scope="module")
def toy_onnx(toy, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "toy.onnx"
    example = torch.zeros(1, 16, dtype=torch.long)
    torch.onnx.export(
        toy,
        (example,),
        path,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_shapes=({1: torch.export.Dim("seq")},),
        dynamo=True,
        verbose=False,
    )
    return path


def test_onnx_matches_torch(toy, toy_onnx, ids):
    expected = perplexity(toy, ids, window=16)
    assert perplexity(toy_onnx, ids, window=16, threads=1) == pytest.approx(expected, rel=1e-5)
    assert perplexity(str(toy_onnx), ids[:32].reshape(2, 16)) == pytest.approx(
        perplexity(toy, ids[:32].reshape(2, 16)), rel=1e-5
    )


def test_onnx_with_two_inputs_is_refused(tmp_path, ids):
    class TwoInputs(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a + b).float()[..., None]

    path = tmp_path / "two.onnx"
    example = torch.zeros(1, 4, dtype=torch.long)
    torch.onnx.export(TwoInputs().eval(), (example, example), path, dynamo=True, verbose=False)
    with pytest.raises(ValueError, match="has inputs .*feeds only the first"):
        perplexity(path, ids, window=4)


@pytest.mark.real
def test_smollm2_fp32_perplexity_is_plausible(smollm2):
    _, eval_ids = wikipedia_token_slices(smollm2.tokenizer, calib_windows=0, eval_windows=2)
    ppl = perplexity(smollm2.module, eval_ids)
    print(f"SmolLM2-135M FP32 perplexity on 2x512 Wikipedia eval tokens: {ppl:.3f}")
    assert math.isfinite(ppl)
    assert 5.0 < ppl < 60.0
