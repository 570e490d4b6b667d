"""The pure helpers of qpass.bench_observers, on a toy model (no real model, no ONNX)."""

from __future__ import annotations

import pytest
import torch

import qpass
from qpass.bench_observers import (
    OBSERVER_NAMES,
    PeakRSS,
    Row,
    _reset_high_water_mark,
    format_table,
    markdown_table,
    observer_recipe,
    observer_state_bytes,
    release_memory,
)
from qpass.config import PerTensor
from qpass.recipes import RECIPES
from tests.toy_models import TinyLM


@pytest.mark.parametrize("name", OBSERVER_NAMES)
def test_observer_recipe_changes_only_the_activation_observer(name: str) -> None:
    base, recipe = RECIPES.get("w8a8_static"), observer_recipe(name)
    act = recipe.precision.activation
    assert act.observer == name
    assert act.granularity == PerTensor() and not act.dynamic and act.symmetric
    assert recipe.precision.weight == base.precision.weight
    assert recipe.keep_float == base.keep_float
    assert recipe.to_dict()["precision"]["activation"] == {
        **base.to_dict()["precision"]["activation"], "observer": name}


def test_observer_recipe_rejects_unknown_names() -> None:
    with pytest.raises(KeyError, match="Known observers"):
        observer_recipe("minmaxx")


@pytest.mark.parametrize("name", ["minmax", "percentile_99.9", "kl", "mse", "aciq"])
def test_observer_recipe_quantizes_a_toy_model(name: str) -> None:
    torch.manual_seed(0)
    model = TinyLM().eval()
    batches = [(torch.randint(0, 50, (1, 16)),) for _ in range(3)]
    prepared = qpass.prepare(model, observer_recipe(name), batches[0])
    qpass.calibrate(prepared, batches, progress=False)
    assert observer_state_bytes(prepared) > 0
    q = qpass.convert(prepared)
    with torch.no_grad():
        ref, out = model(*batches[0]), q(*batches[0])
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.9


def test_histogram_state_does_not_grow_with_batches() -> None:
    model = TinyLM().eval()
    example = (torch.randint(0, 50, (1, 16)),)
    sizes = []
    for n in (2, 20):
        prepared = qpass.prepare(model, observer_recipe("percentile"), example)
        qpass.calibrate(prepared, [(torch.randint(0, 50, (1, 16)),) for _ in range(n)],
                        progress=False)
        sizes.append(observer_state_bytes(prepared))
    assert sizes[0] == sizes[1] > 0


def test_peak_rss_sees_a_torch_allocation() -> None:
    # 128 MiB: above glibc's largest mmap threshold (32 MiB), so the block is always fresh
    # memory, never heap that earlier tests freed and that already counts in the RSS
    release_memory()
    with PeakRSS(interval=0.001) as mem:
        x = torch.ones(128 * 2**20 // 4)  # touched
        x += 1
        del x
    assert mem.start > 0 and mem.peak >= mem.start
    assert mem.increase > 64 * 2**20


@pytest.mark.skipif(not _reset_high_water_mark(), reason="needs Linux /proc/self/clear_refs")
def test_peak_rss_sees_a_peak_shorter_than_its_sampling_interval() -> None:
    # sampling every 10 s never fires inside this block: only the kernel's VmHWM sees it
    release_memory()
    with PeakRSS(interval=10.0) as mem:
        x = torch.ones(128 * 2**20 // 4)
        del x
    assert mem.increase > 64 * 2**20


def test_markdown_table() -> None:
    assert markdown_table(("a", "b"), [("1", "2")]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_format_table_ratios_and_missing_cells() -> None:
    rows = [Row("FP32", 10.0, 2.0, 2.0, 3 * 2**20),
            Row("qpass kl", 11.0, 6.0, 4.0, 5 * 2**20, 2048),
            Row("ORT quantize_static (MinMax)", 12.5, 8.0)]
    lines = format_table(rows, fp32_fwd_s=2.0).splitlines()
    assert len(lines) == 5
    assert lines[2] == "| FP32 | 10.000 | +0.00 | 1.00× | 1.00× | 3 | - |"
    assert lines[3] == "| qpass kl | 11.000 | +10.00 | 3.00× | 2.00× | 5 | 2.0 |"
    assert lines[4] == "| ORT quantize_static (MinMax) | 12.500 | +25.00 | 4.00× | - | - | - |"
