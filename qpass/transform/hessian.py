"""The layer Hessian GPTQ needs, H = 2 XᵀX / n, and its damped inverse Cholesky factor.

For a linear ``y = x Wᵀ`` and the layer-wise loss ||X Wᵀ - X Ŵᵀ||², the Hessian with respect
to each row of W is H = 2 XᵀX (Frantar et al., GPTQ), accumulated here in float64 over every
calibration token. Dividing by the token count n does not change GPTQ's result (damping is
relative to mean(diag H)) and keeps the numbers comparable across data sizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class Hessian:
    """Streaming H = 2 XᵀX / n for one activation X [..., K]."""

    h: torch.Tensor  # [K, K] float64, the sum of xᵀx so far
    tokens: int = 0

    @classmethod
    def empty(cls, k: int) -> Hessian:
        return cls(torch.zeros(k, k, dtype=torch.float64))

    def update(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add one batch: its xᵀx in float32 (the batch's matmul), summed in float64;
        ``weight`` (one per token of x) weighs each token's xᵀx."""
        x2 = x.detach().reshape(-1, x.shape[-1]).float()  # x: [tokens, K]
        xw = x2 if weight is None else x2 * weight.detach().reshape(-1, 1).float()
        self.h += (xw.T @ x2).double()
        self.tokens += x2.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self.h * (2.0 / max(self.tokens, 1))


class HessianError(ValueError):
    """H cannot be factored: GPTQ has no error-feedback direction for this layer."""


def inverse_cholesky(h: torch.Tensor, percdamp: float, where: str, tokens: int,
                     shrinkage: float = 0.0) -> tuple[torch.Tensor, int]:
    """Upper Cholesky factor U of (H' + λI)⁻¹, and the number of dead input features (never
    active on the calibration data: H_ii = 0, given H_ii = 1 so that they decouple and are
    rounded to nearest).

    H' = (1 - ``shrinkage``) H + ``shrinkage`` diag(H) shrinks the off-diagonal correlations
    toward zero, keeping each feature's own scale (0: the textbook H; 1: a diagonal H, for
    which GPTQ is round-to-nearest). λ = ``percdamp`` · mean(diag H). ``where`` names the
    layer for errors. H is not modified.
    """
    h = h.clone()
    k = h.shape[0]
    if shrinkage:
        diag = torch.diagonal(h).clone()
        h.mul_(1.0 - shrinkage).diagonal().copy_(diag)
    if not torch.isfinite(h).all():
        raise HessianError(
            f"GPTQ: the Hessian of {where} holds NaN or Inf (its input overflowed on the "
            "calibration data); check the model and the batches, or keep this layer float")
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    damp = percdamp * torch.diagonal(h).mean()
    h.diagonal().add_(damp)
    for step, what in enumerate(("H + λI", "(H + λI)⁻¹")):
        factor, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:
            raise HessianError(
                f"GPTQ: {what} of {where} is not positive definite (Cholesky fails at column "
                f"{int(info) - 1} of {k}) with percdamp={percdamp}; the layer saw {tokens} "
                f"calibration tokens for {k} input features. Raise GPTQ.percdamp (e.g. to "
                f"{max(10 * percdamp, 0.01):g}) or give more calibration data")
        h = torch.cholesky_inverse(factor) if step == 0 else factor
    return h.T.contiguous(), int(dead.sum())  # upper factor: (H+λI)⁻¹ = Uᵀ U
