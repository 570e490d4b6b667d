"""SmoothQuant on the real models: the fold keeps the float function (≤ 1e-5 relative)."""

from __future__ import annotations

import pytest
import torch

import qpass


def _fold_error(loaded, batches, alpha=0.5, explicit=False):
    gm = qpass.capture(loaded.module, batches[0], dynamic_shapes=loaded.dynamic_shapes)
    recipe = qpass.resolve_recipe("w8a8_static").replace(
        passes=(qpass.SmoothQuant(alpha, explicit_multiply=explicit),))
    prepared = qpass.prepare(gm, recipe, batches[0], calib_data=batches, progress=False)
    groups = prepared.meta["qpass"].reports["passes"]["smoothquant"]["groups"]
    with torch.no_grad():
        ref, got = gm(*batches[-1]), prepared(*batches[-1])
    return ((got - ref).abs().max() / ref.abs().max()).item(), groups


@pytest.mark.real
def test_smollm2_fold_is_exact(smollm2):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 49152, (2, 32), generator=g),) for _ in range(3)]
    rel, groups = _fold_error(smollm2, batches)
    folds = [r["fold"] for r in groups]
    assert folds.count("scale_mul") == 60 and folds.count("linear") == 60  # 30 layers
    assert rel <= 1e-5


@pytest.mark.real
def test_minilm_fold_is_exact_with_explicit_multiplies(minilm):
    ids, mask = minilm.example_inputs
    batches = [(ids, mask), (ids.flip(1), mask)]
    rel, groups = _fold_error(minilm, batches, explicit=True)
    folds = [r["fold"] for r in groups]
    assert folds.count("linear") == 6 and "explicit_multiply" in folds  # v -> attention out
    assert rel <= 1e-5
