"""Merge observers across torch.distributed ranks.

Each rank observed its shard of the calibration data. ``all_reduce_observers`` gathers every
rank's observer state as raw bytes (three ``all_gather`` calls for any number of observers,
no pickling), rebuilds one replica per rank and merges them locally in rank order, so every
rank runs the same arithmetic on the same bits and ends with bit-identical state: that of
``observers_of_rank_0.merge(rank_1).merge(rank_2)...``. Where ``merge`` is exact (MinMax;
ACIQ's moments up to float64 rounding) that is the state one process would have reached
having seen all the data.

Observer state: an observer may define ``state_dict() -> dict[str, Tensor | None]`` and
``load_state_dict(state)``; otherwise its attributes are taken generically: tensors, ints,
floats, bools, ``torch.Size`` and ``None``. Its ``spec`` and frozen-dataclass configs are
construction arguments, not state: they are checked to agree across ranks instead. Any other
attribute type is an error that asks for ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import zlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from qpass.config import QuantSpec
from qpass.observe.observer import Observer

StateValue = torch.Tensor | int | float | bool | torch.Size | None
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
           torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
_MAX_NDIM = 8
_HEADER = 3 + _MAX_NDIM  # kind (see _kind), dtype index, ndim, shape...


def _is_config(v: object) -> bool:
    return isinstance(v, QuantSpec) or (dataclasses.is_dataclass(v) and not isinstance(v, type))


def observer_state(obs: Observer) -> dict[str, StateValue]:
    """The observer's state, keys sorted: its ``state_dict()`` or its plain attributes."""
    custom = getattr(obs, "state_dict", None)
    items = custom().items() if callable(custom) else vars(obs).items()
    state: dict[str, StateValue] = {}
    for key, value in sorted(items):
        if _is_config(value) and not callable(custom):
            continue
        if value is not None and not isinstance(value, (torch.Tensor, int, float, torch.Size)):
            raise TypeError(
                f"{type(obs).__name__}.{key} is a {type(value).__name__}, which qpass cannot "
                "send between ranks; give the observer state_dict() -> dict[str, Tensor | None] "
                "and load_state_dict(state)"
            )
        state[key] = value
    return state


def load_observer_state(obs: Observer, state: dict[str, StateValue]) -> None:
    """Inverse of ``observer_state``."""
    custom = getattr(obs, "load_state_dict", None)
    if callable(custom):
        custom(state)
        return
    for key, value in state.items():
        setattr(obs, key, value)


def _config_fingerprint(obs: Observer) -> str:
    configs = sorted((k, repr(v)) for k, v in vars(obs).items() if _is_config(v))
    return f"{type(obs).__qualname__}{configs}"


def _kind(value: StateValue) -> int:
    if value is None:
        return 0
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, torch.Size):
        return 5
    return 4 if isinstance(value, bool) else 2 if isinstance(value, int) else 3


def _as_tensor(value: StateValue) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.dtype not in _DTYPES:
            raise TypeError(f"observer state of dtype {value.dtype} cannot be sent; allowed: "
                            f"{', '.join(str(d) for d in _DTYPES)}")
        return value.detach()
    if isinstance(value, torch.Size):
        return torch.tensor(list(value), dtype=torch.int64)
    dtype = {2: torch.int64, 3: torch.float64, 4: torch.bool}[_kind(value)]
    return torch.tensor(value, dtype=dtype)


def _encode(values: list[StateValue]) -> tuple[torch.Tensor, torch.Tensor]:
    """(header [fields, _HEADER] int64, payload uint8) for a flat list of state values."""
    header = torch.zeros(len(values), _HEADER, dtype=torch.int64)
    chunks = []
    for i, value in enumerate(values):
        header[i, 0] = _kind(value)
        if value is None:
            continue
        t = _as_tensor(value).cpu().contiguous()
        if t.dim() > _MAX_NDIM:
            raise ValueError(f"observer state of rank {t.dim()} > {_MAX_NDIM} cannot be sent")
        header[i, 1], header[i, 2] = _DTYPES.index(t.dtype), t.dim()
        header[i, 3:3 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
        chunks.append(t.reshape(-1).view(torch.uint8))
    payload = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)
    return header, payload


def _decode(header: torch.Tensor, payload: torch.Tensor) -> list[StateValue]:
    values: list[StateValue] = []
    offset = 0
    for kind, dtype_i, ndim, *dims in header.tolist():
        if kind == 0:
            values.append(None)
            continue
        dtype, shape = _DTYPES[dtype_i], dims[:ndim]
        nbytes = math.prod(shape) * dtype.itemsize
        t = payload[offset:offset + nbytes].clone().view(dtype).reshape(shape)
        offset += nbytes
        values.append(_restore(kind, t))
    return values


def _restore(kind: int, t: torch.Tensor) -> StateValue:
    if kind == 1:
        return t
    if kind == 5:
        return torch.Size(t.tolist())
    return {2: int, 3: float, 4: bool}[kind](t.item())


def _gather(t: torch.Tensor, group: Any, device: torch.device) -> list[torch.Tensor]:
    out = [torch.empty_like(t, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t.to(device), group=group)
    return [o.cpu() for o in out]


def _comm_device(group: Any) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_schema(states: list[dict[str, StateValue]], observers: Sequence[Observer],
                  group: Any, device: torch.device) -> None:
    text = "|".join(f"{_config_fingerprint(o)}:{','.join(s)}"
                    for o, s in zip(observers, states, strict=True))
    mine = torch.tensor([len(observers), zlib.crc32(text.encode())], dtype=torch.int64)
    schemas = _gather(mine, group, device)
    if any(not torch.equal(s, schemas[0]) for s in schemas):
        raise ValueError(
            "all_reduce_observers: the ranks hold different observers (count, types, specs, "
            f"configs or state keys differ; (count, fingerprint) per rank: "
            f"{[s.tolist() for s in schemas]}). Prepare the same model with the same recipe on "
            "every rank and pass the observers in the same order"
        )


def all_reduce_observers(observers: Sequence[Observer], group: Any = None) -> None:
    """Replace each rank's observers, in place, by the merge of all ranks' observers.

    Collective: every rank of ``group`` must call it with the same observers (same types,
    specs and order). Works with gloo (CPU) and nccl (tensors go through the current CUDA
    device); the state itself stays on the device it was on.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("all_reduce_observers needs torch.distributed initialized "
                           "(dist.init_process_group) on every rank")
    states = [observer_state(o) for o in observers]
    device = _comm_device(group)
    _check_schema(states, observers, group, device)
    header, payload = _encode([v for s in states for v in s.values()])
    headers = _gather(header, group, device)
    padded = torch.zeros(max(1, *(_payload_bytes(h) for h in headers)), dtype=torch.uint8)
    padded[:payload.numel()] = payload
    payloads = _gather(padded, group, device)
    per_rank = [_decode(h, p) for h, p in zip(headers, payloads, strict=True)]
    offset = 0
    for obs, state in zip(observers, states, strict=True):
        keys = list(state)
        merged: Observer | None = None
        for values in per_rank:
            replica = copy.deepcopy(obs)
            load_observer_state(replica, dict(zip(keys, values[offset:offset + len(keys)],
                                                  strict=True)))
            merged = replica if merged is None else merged.merge(replica)
        assert merged is not None
        load_observer_state(obs, _to_local_device(observer_state(merged), state))
        offset += len(keys)


def _payload_bytes(header: torch.Tensor) -> int:
    total = 0
    for kind, dtype_i, ndim, *dims in header.tolist():
        if kind:
            total += math.prod(dims[:ndim]) * _DTYPES[dtype_i].itemsize
    return total


def _to_local_device(merged: dict[str, StateValue], local: dict[str, StateValue]
                     ) -> dict[str, StateValue]:
    devices = [v.device for v in local.values() if isinstance(v, torch.Tensor)]
    if not devices:
        return merged
    return {k: v.to(devices[0]) if isinstance(v, torch.Tensor) else v for k, v in merged.items()}
