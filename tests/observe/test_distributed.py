"""all_reduce_observers on two local gloo processes: every rank ends identical, and equal to
one process that saw all the data (exactly for MinMax, to float64 rounding for ACIQ)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qpass.config import PerChannel, QuantSpec
from qpass.observe.aciq import ACIQConfig, ACIQObserver
from qpass.observe.distributed import all_reduce_observers, load_observer_state, observer_state
from qpass.observe.ema import EMAMinMaxObserver
from qpass.observe.minmax import MinMaxObserver
from qpass.observe.observer import Observer

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[[int, Path], None], port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        fn(rank, out)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[[int, Path], None], out: Path) -> list[dict]:
    """Run ``fn(rank, out)`` on WORLD gloo processes; each saves out/rank{r}.pt."""
    mp.spawn(_entry, args=(fn, _free_port(), out), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _observers() -> list[Observer]:
    return [
        MinMaxObserver(QuantSpec("int8")),
        MinMaxObserver(QuantSpec("int8", granularity=PerChannel(1))),
        EMAMinMaxObserver(QuantSpec("int8", symmetric=False, observer="ema_minmax")),
        ACIQObserver(QuantSpec("int4", granularity=PerChannel(1), observer="aciq")),
        ACIQObserver(QuantSpec("int8", symmetric=False), ACIQConfig("auto")),
        MinMaxObserver(QuantSpec("uint8", symmetric=False)),  # sees data on rank 0 only
    ]


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(32, 8, generator=g) * (1 + i) + i for i in range(6)]


def _observe(observers: list[Observer], batches: list[torch.Tensor], rank: int) -> None:
    """Feed ``batches`` to all observers; the last one only on rank 0."""
    for x in batches:
        for i, obs in enumerate(observers):
            if i < len(observers) - 1 or rank == 0:
                obs.update(x)


def _snapshot(observers: list[Observer]) -> dict:
    return {"qparams": [o.qparams() for o in observers],
            "state": [observer_state(o) for o in observers]}


def _worker(rank: int, out: Path) -> None:
    observers = _observers()
    _observe(observers, _batches()[rank::WORLD], rank)
    all_reduce_observers(observers)
    torch.save(_snapshot(observers), out / f"rank{rank}.pt")


def _assert_same(a: object, b: object, exact: bool) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype
        if exact:
            assert torch.equal(a, b), (a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y, exact)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k], exact)
    else:
        assert a == b


def test_all_reduce_matches_single_process(tmp_path: Path) -> None:
    ranks = run_ranks(_worker, tmp_path)
    _assert_same(ranks[0], ranks[1], exact=True)  # bit-identical on every rank

    single = _observers()
    for x in _batches():
        for obs in single[:-1]:
            obs.update(x)
    _observe(single[-1:], _batches()[0::WORLD], 0)  # the rank-0-only observer
    want = _snapshot(single)
    got = ranks[0]
    for i in (0, 1, 5):  # MinMax: exact
        _assert_same(got["qparams"][i], want["qparams"][i], exact=True)
        _assert_same(got["state"][i], want["state"][i], exact=True)
    for i in (3, 4):  # ACIQ: moments exact up to float64 rounding, same count and range
        _assert_same(got["state"][i], want["state"][i], exact=False)
        torch.testing.assert_close(got["qparams"][i][0], want["qparams"][i][0],
                                   rtol=1e-6, atol=0)
    # EMA: order dependent; the merge is the count-weighted average of the shards' EMAs
    shards = [_observers()[2] for _ in range(WORLD)]
    for r, obs in enumerate(shards):
        for x in _batches()[r::WORLD]:
            obs.update(x)
    ema = shards[0].merge(shards[1])
    assert ema.count == 6
    _assert_same(got["state"][2], observer_state(ema), exact=True)


def test_state_round_trip_and_unsupported_state() -> None:
    obs = ACIQObserver(QuantSpec("int8"))
    obs.update(torch.randn(10))
    state = observer_state(obs)
    assert "spec" not in state and "config" not in state and state["n"] == 10
    fresh = ACIQObserver(QuantSpec("int8"))
    load_observer_state(fresh, state)
    assert torch.equal(fresh.qparams()[0], obs.qparams()[0])
    obs.history = [1, 2]  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"ACIQObserver.history is a list.*state_dict\(\)"):
        observer_state(obs)


def test_needs_initialized_process_group() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        all_reduce_observers([MinMaxObserver(QuantSpec("int8"))])
