"""calibrate_distributed on two gloo ranks: a tiny 2-layer model, recipe w8a8_static."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import qpass
from qpass.calibrate.distributed import calibrate_distributed
from qpass.observe.module import ObserverModule
from qpass.state import get_state
from tests.observe.test_distributed import WORLD, run_ranks


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _prepared() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    # symbolic_trace: capturing with torch.export costs ~3 s per fresh process
    gm = qpass.capture(TwoLayer().eval(), x, method="symbolic_trace")
    return qpass.prepare(gm, "w8a8_static", x)


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 8, generator=g) * (i + 1) for i in range(5)]


def _summary(gm: torch.fx.GraphModule) -> dict:
    observers = {n: m.observer.qparams() for n, m in gm.named_children()
                 if isinstance(m, ObserverModule)}
    state = get_state(gm, "test")
    # equal qparams and equal weights make equal converted models (convert costs ~5 s in a
    # fresh process, so it is not run here)
    return {"qparams": observers, "batches": state.calibrated_batches, "phase": state.phase}


def _worker(rank: int, out: Path) -> None:
    sharded = calibrate_distributed(_prepared(), _batches()[rank::WORLD])
    lopsided = calibrate_distributed(_prepared(), _batches() if rank == 0 else [])
    torch.save({"sharded": _summary(sharded), "lopsided": _summary(lopsided)},
               out / f"rank{rank}.pt")


def test_calibrate_distributed_equals_single_process(tmp_path: Path) -> None:
    ranks = run_ranks(_worker, tmp_path)
    want = _summary(qpass.calibrate(_prepared(), _batches(), progress=False))
    assert len(want["qparams"]) == 2  # one observer per linear input
    for got in ranks:
        for case in ("sharded", "lopsided"):
            result = got[case]
            assert result["batches"] == 5 and result["phase"] == "calibrated"
            for name, (scale, zp) in want["qparams"].items():
                assert torch.equal(result["qparams"][name][0], scale)
                assert torch.equal(result["qparams"][name][1], zp)


def test_single_tensor_is_refused() -> None:
    with pytest.raises(qpass.CalibrationDataError, match="single tensor"):
        calibrate_distributed(_prepared(), torch.randn(4, 8))
