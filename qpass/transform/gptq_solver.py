"""The GPTQ solver (Frantar et al., 2023): quantize one weight matrix column by column,
feeding each column's rounding error into the columns not yet quantized through the upper
Cholesky factor U of H⁻¹ (H: the layer Hessian, see ``hessian``).

For column i with U = chol((H + λI)⁻¹)ᵀ::

    q_i   = Q(w_i)                          (qpass.numerics: round half to even, saturate)
    e_i   = (w_i - dq(q_i)) / U_ii
    w_j  -= e_i U_ij            for j > i   (inside a block of columns at once; the block's
                                             errors reach the later blocks as one matmul)

Quantization parameters come from the spec's observer (minmax by default), exactly as convert
computes them for round-to-nearest:

- per tensor / per channel: from the whole original weight;
- per group, in column order: from the group's columns when the solver reaches the group,
  i.e. with the error feedback of every earlier column applied (blocks are aligned to groups;
  a group size that does not divide K leaves a shorter last group, see ``convert.weights``);
- per group with act-order ("static groups"): columns are visited by decreasing H_ii, and each
  group's parameters come from the original weight up front, so every group keeps one scale
  and the result is stored in the plain per-group layout (no column permutation index).

Everything runs in float64 except the rounding itself, which quantizes the float32 value of
each column with float32 scales, as the converted graph does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qpass import numerics
from qpass.config import PerChannel, PerGroup, PerTensor, QuantSpec
from qpass.convert.weights import QuantizedWeight, block_size, group_qparams, to_blocks
from qpass.observe import make_observer
from qpass.transform.hessian import inverse_cholesky


@dataclass(frozen=True)
class GPTQResult:
    weight: QuantizedWeight  # [K, N] storage, as convert keeps it
    dead_features: int  # inputs never active on the calibration data (rounded to nearest)


def row_qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [N] per row of ``w`` [N, m] (0-d for a PerTensor spec)."""
    gran = PerTensor() if isinstance(spec.granularity, PerTensor) else PerChannel(0)
    observer = make_observer(dataclasses.replace(spec, granularity=gran))
    observer.update(w.float())
    return observer.qparams()


def _static_qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameters fixed before the solver starts: [N, G] per group, [N, 1] per channel,
    [1, 1] per tensor (G groups; one column of parameters per group)."""
    if isinstance(spec.granularity, PerGroup):
        return group_qparams(w, spec)
    scale, zp = row_qparams(w, spec)
    return scale.reshape(-1, 1), zp.reshape(-1, 1)


def _block_size(blocksize: int, spec: QuantSpec) -> int:
    g = spec.granularity
    if not isinstance(g, PerGroup):
        return blocksize
    return max(g.size, blocksize // g.size * g.size)  # groups never straddle blocks


def _pack(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor,
          spec: QuantSpec) -> QuantizedWeight:
    """Codes [N, K] and parameters [N, G] in the layout ``quantize_weight`` stores."""
    g = spec.granularity
    if isinstance(g, PerGroup):  # [N, G] -> the stored blocks [K / block, N]
        k = q.shape[1]
        return QuantizedWeight(q.T.contiguous(), to_blocks(scale, k, g.size).T.contiguous(),
                               to_blocks(zp, k, g.size).T.contiguous(), 0, spec.format)
    if isinstance(spec.granularity, PerTensor):
        return QuantizedWeight(q.T.contiguous(), scale.reshape(()), zp.reshape(()), 1,
                               spec.format)
    return QuantizedWeight(q.T.contiguous(), scale[:, 0].contiguous(), zp[:, 0].contiguous(),
                           1, spec.format)


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, *, percdamp: float = 0.01,
                  blocksize: int = 128, act_order: bool = False, where: str = "a layer",
                  tokens: int = 0,
                  row_hessians: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                  shrinkage: float = 0.0) -> GPTQResult:
    """Quantize ``w`` [N, K] (out, in) for the Hessian ``h`` [K, K] of its input.

    ``row_hessians``: (rows, H) pairs that give some rows their own Hessian (an attention-
    weighted one per value head, see ``attention_values``); rows not listed use ``h``. Each
    row's solution depends on its own Hessian only, so solving a set of rows against H gives
    the rows the same integers as solving the whole matrix against H. ``percdamp`` and
    ``shrinkage`` regularize every H (``hessian.inverse_cholesky``).
    """
    n, k = w.shape
    g = spec.granularity
    gsize = g.size if isinstance(g, PerGroup) else k
    try:
        block_size(k, gsize)
    except ValueError as exc:
        raise ValueError(f"GPTQ cannot store the groups of {where}: {exc}") from None
    dynamic_groups = isinstance(g, PerGroup) and not act_order
    if dynamic_groups:  # filled in as the solver reaches each group
        scale = torch.empty(n, -(-k // gsize))
        zp = torch.empty(n, -(-k // gsize), dtype=spec.fmt.storage)
    else:
        scale, zp = _static_qparams(w, spec)  # [N, G], or [1, 1] per tensor
    codes = torch.empty(n, k, dtype=spec.fmt.storage)
    parts = row_parts(n, h, row_hessians)
    dead = 0
    for rows, hr in parts:
        prow = rows if scale.shape[0] == n else slice(None)  # per tensor: one shared scale
        sr, zr = scale[prow], zp[prow]
        codes[rows], d = _solve(w[rows], hr, spec, sr, zr, dynamic_groups, gsize, percdamp,
                                shrinkage, blocksize, act_order, where, tokens)
        scale[prow], zp[prow] = sr, zr
        dead = max(dead, d)
    return GPTQResult(_pack(codes, scale, zp, spec), dead)


def row_parts(n: int, h: torch.Tensor, row_hessians) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, H) for every row: the given sets, then the rest against ``h``."""
    taken = torch.zeros(n, dtype=torch.bool)
    parts = []
    for rows, hr in row_hessians:
        rows = torch.as_tensor(rows, dtype=torch.long)
        if taken[rows].any():
            raise ValueError("GPTQ row_hessians: a row is given two Hessians")
        taken[rows] = True
        parts.append((rows, hr))
    rest = torch.nonzero(~taken).flatten()
    if len(rest):
        parts.append((rest, h))
    return parts


def _solve(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, scale: torch.Tensor,
           zp: torch.Tensor, dynamic_groups: bool, gsize: int, percdamp: float, shrinkage: float,
           blocksize: int, act_order: bool, where: str, tokens: int) -> tuple[torch.Tensor, int]:
    """Codes [n, K] of the rows ``w`` [n, K]; fills ``scale``/``zp`` [n, G] in place when the
    groups are dynamic (static ones are read). ``percdamp``/``shrinkage``: see
    ``hessian.inverse_cholesky``."""
    n, k = w.shape
    fmt = spec.fmt
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order \
        else torch.arange(k)
    u, dead = inverse_cholesky(h[perm][:, perm], percdamp, where, tokens, shrinkage)
    work = w.double()[:, perm].clone()  # [n, K] in visiting order
    codes = torch.empty(n, k, dtype=fmt.storage)
    bsize = _block_size(blocksize, spec)
    for i1 in range(0, k, bsize):
        i2 = min(i1 + bsize, k)
        w1 = work[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])  # the column's index in the original weight
            grp = col // gsize
            if dynamic_groups and col % gsize == 0:
                scale[:, grp], zp[:, grp] = row_qparams(w1[:, i:i + gsize], spec)
            s, z = scale[:, grp], zp[:, grp]
            q = numerics.quantize(w1[:, i].float(), s, z, fmt)
            codes[:, col] = q
            e = (w1[:, i] - numerics.dequantize(q, s, z).double()) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        work[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes, dead
