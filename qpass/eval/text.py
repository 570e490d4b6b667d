"""English text for calibration and evaluation, offline.

The source is the Wikipedia dump shipped in the gensim wheel
(``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``,
107 articles, about 480k words once the wiki markup is stripped). The articles, in dump
order, are split in two at the article where half of the characters have been seen:

- calibration windows come from the start of the FIRST half (from "Anarchism" on);
- evaluation windows come from the start of the SECOND half.

No article contributes to both, so calibration never sees evaluation text, and the eval
slice does not move when the number of calibration windows changes. Token streams are
cached under ``~/.cache/qpass`` (or ``$QPASS_CACHE_DIR``) as ``.npy`` files, read back with
``allow_pickle=False``, keyed by a fingerprint of the tokenizer and of the source text.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

WIKI_FILE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CACHE_VERSION = 1
_CHUNK_CHARS = 1 << 16
_PROBE = "Hello world!\n\n  The 3 quick brown foxes, naïvely: jumped 1234 times.\tÉté 東京"


def cache_dir() -> Path:
    """``$QPASS_CACHE_DIR`` if set, else ``~/.cache/qpass``."""
    return Path(os.environ.get("QPASS_CACHE_DIR") or "~/.cache/qpass").expanduser()


def wikipedia_token_slices(
    tokenizer: Any, *, calib_windows: int = 8, eval_windows: int = 12, window: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """(calib_ids: [calib_windows, window], eval_ids: [eval_windows, window]), int64.

    Calibration windows are the first tokens of the first half of the articles, evaluation
    windows the first tokens of the second half (see the module docstring). Text is
    tokenized with ``add_special_tokens=False``.
    """
    calib_text, eval_text = wikipedia_halves()
    calib = _cached_tokens(tokenizer, "enwiki-calib", _text_key(calib_text), lambda: calib_text)
    evals = _cached_tokens(tokenizer, "enwiki-eval", _text_key(eval_text), lambda: eval_text)
    return (
        _windows(calib, calib_windows, window, "Wikipedia calibration half"),
        _windows(evals, eval_windows, window, "Wikipedia evaluation half"),
    )


def text_file_token_slices(
    path: str | Path,
    tokenizer: Any,
    *,
    windows: int | None = None,
    window: int = 512,
    skip_windows: int = 0,
) -> torch.Tensor:
    """Token windows [n, window] (int64) from a UTF-8 text file.

    Skips the first ``skip_windows`` windows, then returns ``windows`` windows (all the
    full windows left when ``None``); the short tail is dropped. Use two calls with
    different ``skip_windows`` for disjoint calibration and evaluation slices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist or is not a file")
    if skip_windows < 0 or window < 2:
        raise ValueError(
            f"need skip_windows >= 0 and window >= 2, got skip_windows={skip_windows}, "
            f"window={window}"
        )
    data = path.read_bytes()
    key = hashlib.sha256(data).hexdigest()
    stream = _cached_tokens(tokenizer, "file", key, lambda: data.decode("utf-8"))
    what = f"text file {str(path)!r} after skipping {skip_windows} windows"
    stream = stream[skip_windows * window :]
    return _windows(stream, len(stream) // window if windows is None else windows, window, what)


def wikipedia_halves() -> tuple[str, str]:
    """(calibration text, evaluation text): the articles split at half of the characters."""
    articles = wikipedia_articles()
    total = sum(len(a) for a in articles)
    seen, split = 0, len(articles)
    for i, article in enumerate(articles):
        if seen >= total / 2:
            split = i
            break
        seen += len(article)
    return "\n\n".join(articles[:split]) + "\n\n", "\n\n".join(articles[split:]) + "\n\n"


def wikipedia_articles() -> list[str]:
    """Plain-text articles ("Title\\n\\nbody") of the gensim Wikipedia dump, in dump order."""
    source = wiki_dump_path()
    cached = cache_dir() / f"enwiki-articles-v{CACHE_VERSION}-{source.stat().st_size}.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(source, "rb") as f:
        for title, raw, _page_id in extract_pages(f, filter_namespaces=("0",)):
            if raw.lstrip().lower().startswith("#redirect"):
                continue
            articles.append(f"{title}\n\n{_clean(filter_wiki(raw))}")
    _atomic_write(cached, json.dumps(articles, ensure_ascii=False).encode("utf-8"))
    log.info("extracted %d Wikipedia articles to %s", len(articles), cached)
    return articles


def wiki_dump_path() -> Path:
    """The bz2 Wikipedia dump inside the installed gensim wheel (found without importing)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the evaluation text ships with gensim, which is not installed. "
            "Install it with: pip install 'qpass[models]'  (or pip install gensim)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WIKI_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"gensim is installed but its test data {str(path)!r} is missing; "
            "reinstall gensim from the wheel (pip install --force-reinstall gensim)"
        )
    return path


def _clean(text: str) -> str:
    """Strip the wiki markup that filter_wiki leaves: bold/italic quotes, == headings ==."""
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^\s*=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.MULTILINE)
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _windows(stream: np.ndarray, n: int, window: int, what: str) -> torch.Tensor:
    """The first n windows of stream: [n, window] int64."""
    if window < 2:
        raise ValueError(f"window must be >= 2 (one token predicts the next), got {window}")
    if n < 0:
        raise ValueError(f"the number of windows must be >= 0, got {n}")
    if len(stream) < n * window:
        raise ValueError(
            f"the {what} has {len(stream)} tokens, but {n} windows of {window} ask for "
            f"{n * window}; ask for at most {len(stream) // window} windows or use more text"
        )
    return torch.from_numpy(stream[: n * window].astype(np.int64)).reshape(n, window)


def _cached_tokens(
    tokenizer: Any, source: str, source_key: str, read_text: Callable[[], str]
) -> np.ndarray:
    """The whole token stream of a text, tokenized once per (tokenizer, text) and cached."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(_tokenizer_name(tokenizer)).name)[-40:]
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, source_key, _tokenizer_fingerprint(tokenizer)]).encode()
    ).hexdigest()[:20]
    path = cache_dir() / "tokens" / f"{source}-{name}-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    stream = tokenize_text(tokenizer, read_text())
    _atomic_write(path, _npy_bytes(stream))
    log.info("tokenized %s: %d tokens, cached at %s", source, len(stream), path)
    return stream


def tokenize_text(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of ``text`` (no special tokens) as int32, tokenized in line-aligned chunks."""
    chunks, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= _CHUNK_CHARS:
            chunks.append("".join(current))
            current, size = [], 0
    if current:
        chunks.append("".join(current))
    if not chunks:
        return np.zeros(0, dtype=np.int32)
    ids = tokenizer(chunks, add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray(row, dtype=np.int64) for row in ids]).astype(np.int32)


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _tokenizer_fingerprint(tokenizer: Any) -> list[Any]:
    """Class, vocabulary size and the ids of a probe string: changes when tokenization does."""
    probe = tokenizer([_PROBE], add_special_tokens=False)["input_ids"][0]
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    return [type(tokenizer).__name__, _tokenizer_name(tokenizer), size, list(map(int, probe))]


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so concurrent runs never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
