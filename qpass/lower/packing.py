"""Weight layouts the kernels read, packed once from what ``qpass.convert`` stored.

Every kernel family has one layout, shared by its GPU kernels and its CPU reference, so a
test feeds both the same packed tensors:

- ``w8a8_int8`` / ``w8a8_fp8``: ``w_q`` [N, K] (each output channel's K codes contiguous:
  the column-major [K, N] operand cuBLASLt wants), ``w_scale`` [N] float32, and for static
  activations ``x_scale`` (0-d float32).
- ``weight_only``: ``w_q`` [K, N] 8-bit codes, or ``w_packed`` [K, ceil(N/2)] uint8 with two
  4-bit codes per byte (column 2j in the low nibble, 2j+1 in the high one, as unsigned
  codes ``q - qmin``); ``w_scale`` [G, N] float32 with G = K / group_size; ``w_zero`` [G, N]
  float32 (in code units) only for asymmetric weights.
"""

from __future__ import annotations

import torch

from qpass import numerics


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """codes: [K, N] unsigned 4-bit values (0..15) in any integer dtype -> [K, ceil(N/2)] uint8."""
    if codes.dim() != 2:
        raise ValueError(f"pack_int4 expects a [K, N] matrix, got shape {tuple(codes.shape)}")
    c = codes.to(torch.int16)
    if int(c.min()) < 0 or int(c.max()) > 15:
        raise ValueError(f"4-bit codes must lie in [0, 15]; got [{int(c.min())}, {int(c.max())}]")
    if c.shape[1] % 2:
        c = torch.nn.functional.pad(c, (0, 1))
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """[K, ceil(N/2)] uint8 -> [K, N] uint8 codes (0..15)."""
    p = packed.to(torch.int16)
    both = torch.stack((p & 0xF, p >> 4), dim=-1).reshape(p.shape[0], -1)
    return both[:, :n].to(torch.uint8)


def per_channel_scale(scale: torch.Tensor, n: int) -> torch.Tensor:
    """A per-tensor (0-d) or per-channel ([N]) weight scale as [N] float32."""
    return scale.float().reshape(-1).expand(n).contiguous() if scale.dim() == 0 else \
        scale.float().contiguous()


def group_qparams(scale: torch.Tensor, zero_point: torch.Tensor, k: int,
                  n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight qparams of any granularity as [G, N] float32 blocks along K (G divides K)."""
    if scale.dim() == 2:  # per group: [K/g, N]
        return scale.float().contiguous(), zero_point.float().contiguous()
    s = per_channel_scale(scale, n).reshape(1, n)
    z = zero_point.float().reshape(-1).expand(n).reshape(1, n).contiguous()
    return s, z


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor,
                      zero: torch.Tensor) -> torch.Tensor:
    """(codes - zero) * scale with [G, N] qparams repeated over K: [K, N] float32.

    The same numbers as ``qpass.ops.dequantize`` of the converted weight.
    """
    shape = codes.shape
    return numerics.dequantize(codes, numerics.expand_blocks(scale, shape),
                               numerics.expand_blocks(zero, shape))
