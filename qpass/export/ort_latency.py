"""Time several ONNX Runtime sessions side by side, interleaved so machine noise hits all alike."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qpass.eval.ort import ort_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock seconds of one ``session.run`` over ``repeats`` timed runs.

    ``cpu_median_s`` is the median CPU time of the process over the same runs (all threads):
    on a machine shared with other work it moves much less than wall time, since waiting for a
    core costs no CPU time, so ratios of it are the steadier figure there.
    """

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int
    cpu_median_s: float = float("nan")

    def __str__(self) -> str:
        return (f"{self.median_s * 1e3:.2f} ms (p10 {self.p10_s * 1e3:.2f}, "
                f"p90 {self.p90_s * 1e3:.2f}, cpu {self.cpu_median_s * 1e3:.2f}, "
                f"n={self.repeats})")


def measure_latency(
    sessions: Mapping[str, ort.InferenceSession | str | Path],
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int = 2,
    repeats: int = 10,
    threads: int = 2,
) -> dict[str, LatencyStats]:
    """Median and p10/p90 latency of each session, timed round-robin in one run.

    Paths are opened with :func:`qpass.eval.ort.ort_session` (``threads`` intra-op threads).
    Each session gets the entries of ``feeds`` that it declares as inputs. Every round runs all
    sessions once, starting one further along each round, so neither drift nor order favours one.

    Open sessions with ``session.intra_op.allow_spinning=0``: threads that spin after a run
    steal cores from the next session (on a 2-core VM they made even a lone session 1.4x slower).
    """
    if not sessions:
        raise ValueError("sessions is empty; pass {name: InferenceSession or .onnx path}")
    _check_count("warmup", warmup, least=0)
    _check_count("repeats", repeats, least=1)
    opened = {k: s if isinstance(s, ort.InferenceSession) else ort_session(s, threads)
              for k, s in sessions.items()}
    runs = {k: (s, _feeds_for(k, s, feeds)) for k, s in opened.items()}
    spinning = [k for k, s in opened.items() if _spins(s)]
    if spinning:
        log.warning("sessions %s spin their intra-op threads between runs, which inflates "
                    "interleaved timings; set session.intra_op.allow_spinning=0", spinning)
    names = list(runs)
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + repeats):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            session, feed = runs[name]
            start, cpu_start = time.perf_counter(), time.process_time()
            session.run(None, feed)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    stats = {k: _stats(v, cpu[k]) for k, v in times.items()}
    for k, s in stats.items():
        log.info("latency %s: %s", k, s)
    return stats


def _check_count(name: str, value: int, *, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


def _spins(session: ort.InferenceSession) -> bool:
    options = session.get_session_options()
    try:  # an unset entry raises; ORT's default is to spin
        return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except RuntimeError:
        return True


def _feeds_for(name: str, session: ort.InferenceSession,
               feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = [i.name for i in session.get_inputs()]
    missing = [n for n in wanted if n not in feeds]
    if missing:
        raise ValueError(
            f"session {name!r} needs inputs {wanted} but feeds has no {missing} "
            f"(feeds has {sorted(feeds)}); add them to feeds")
    return {n: feeds[n] for n in wanted}


def _stats(seconds: list[float], cpu_seconds: list[float]) -> LatencyStats:
    p10, median, p90 = np.percentile(np.asarray(seconds), [10, 50, 90])
    return LatencyStats(float(median), float(p10), float(p90), len(seconds),
                        float(np.median(cpu_seconds)))
