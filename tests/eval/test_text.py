from __future__ import annotations

import numpy as np
import pytest
import torch

from qpass.eval import text_file_token_slices, wikipedia_token_slices
from qpass.eval.text import cache_dir, wikipedia_articles, wikipedia_halves


class ByteTokenizer:
    """A stand-in tokenizer: one token per character (code points clipped to 255)."""

    name_or_path = "toy-bytes"

    def __init__(self) -> None:
        self.calls = 0

    def __len__(self) -> int:
        return 256

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict:
        assert add_special_tokens is False
        self.calls += 1
        return {"input_ids": [[min(ord(c), 255) for c in t] for t in texts]}

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(chr(i) for i in ids.tolist())


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Every test here caches into its own folder, never ~/.cache/qpass."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QPASS_CACHE_DIR", str(tmp_path_factory.mktemp("qpass-cache")))
        yield


def ascii_halves() -> tuple[str, str]:
    calib, evals = wikipedia_halves()
    clip = lambda s: "".join(chr(min(ord(c), 255)) for c in s)  # noqa: E731
    return clip(calib), clip(evals)


def test_articles_are_plain_text():
    articles = wikipedia_articles()
    assert len(articles) > 100
    assert articles[0].startswith("Anarchism\n\nAnarchism is a political philosophy")
    body = "\n".join(articles)
    assert "'''" not in body and "\n==" not in body


def test_shapes_and_disjoint_halves():
    tok = ByteTokenizer()
    calib, evals = wikipedia_token_slices(tok, calib_windows=3, eval_windows=4, window=64)
    assert calib.shape == (3, 64) and evals.shape == (4, 64)
    assert calib.dtype == evals.dtype == torch.int64
    calib_half, eval_half = ascii_halves()
    assert calib_half.startswith(tok.decode(calib.flatten()))
    assert eval_half.startswith(tok.decode(evals.flatten()))
    for row in evals:
        assert tok.decode(row) not in calib_half
    for row in calib:
        assert tok.decode(row) not in eval_half


def test_eval_slice_does_not_move_with_calibration_size():
    tok = ByteTokenizer()
    _, evals_small = wikipedia_token_slices(tok, calib_windows=1, eval_windows=2, window=32)
    _, evals_big = wikipedia_token_slices(tok, calib_windows=50, eval_windows=2, window=32)
    assert torch.equal(evals_small, evals_big)


def test_tokens_are_cached_as_plain_npy():
    tok = ByteTokenizer()
    wikipedia_token_slices(tok, calib_windows=1, eval_windows=1, window=16)
    calls = tok.calls
    wikipedia_token_slices(tok, calib_windows=2, eval_windows=2, window=16)
    assert tok.calls - calls <= 2  # only the fingerprint probes, no re-tokenizing
    files = sorted((cache_dir() / "tokens").glob("enwiki-*toy-bytes*.npy"))
    assert len(files) == 2
    assert np.load(files[0], allow_pickle=False).dtype == np.int32


def test_too_little_text():
    with pytest.raises(ValueError, match=r"has \d+ tokens, but 100000 windows of 512 ask for"):
        wikipedia_token_slices(ByteTokenizer(), eval_windows=100_000)
    with pytest.raises(ValueError, match="window must be >= 2"):
        wikipedia_token_slices(ByteTokenizer(), window=1)


def test_text_file_slices(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("".join(f"line {i} of a small story\n" for i in range(40)), encoding="utf-8")
    tok = ByteTokenizer()
    everything = text_file_token_slices(path, tok, window=32)
    n = len(path.read_text()) // 32
    assert everything.shape == (n, 32)
    assert tok.decode(everything.flatten()) == path.read_text()[: n * 32]
    later = text_file_token_slices(path, tok, windows=2, window=32, skip_windows=3)
    assert torch.equal(later, everything[3:5])
    left = len(path.read_text()) - 32
    with pytest.raises(ValueError, match=rf"has {left} tokens, but {n} windows of 32"):
        text_file_token_slices(path, tok, windows=n, window=32, skip_windows=1)
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        text_file_token_slices(tmp_path / "nothing.txt", tok)


@pytest.mark.real
def test_smollm2_tokenizer_slices(smollm2):
    calib, evals = wikipedia_token_slices(smollm2.tokenizer)
    assert calib.shape == (8, 512) and evals.shape == (12, 512)
    assert calib.dtype == evals.dtype == torch.int64
    calib_half, eval_half = wikipedia_halves()
    first_eval = smollm2.tokenizer.decode(evals[0, :200])
    first_calib = smollm2.tokenizer.decode(calib[0, :200])
    assert eval_half.startswith(first_eval) and first_eval not in calib_half
    assert calib_half.startswith(first_calib) and first_calib not in eval_half
