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
    """Streaming H = 2 XᵀX / n for one activation X [..., K], and, when the float model's
    value X̃ of the same activation is given, the cross term D = 2 Xᵀ(X̃ - X) / n."""

    h: torch.Tensor  # [K, K] float64, the sum of xᵀx so far
    tokens: int = 0
    d: torch.Tensor | None = None  # [K, K] float64, the sum of xᵀ(x̃ - x) so far

    @classmethod
    def empty(cls, k: int) -> Hessian:
        return cls(torch.zeros(k, k, dtype=torch.float64))

    def update(self, x: torch.Tensor, weight: torch.Tensor | None = None,
               target: torch.Tensor | None = None) -> None:
        """Add one batch: its xᵀx in float32 (the batch's matmul), summed in float64;
        ``weight`` (one per token of x) weighs each token's xᵀx; ``target``: the float
        model's value of x, for the cross term."""
        x2 = x.detach().reshape(-1, x.shape[-1]).float()  # x: [tokens, K]
        xw = x2 if weight is None else x2 * weight.detach().reshape(-1, 1).float()
        self.h += (xw.T @ x2).double()
        if target is not None:
            if self.d is None:
                self.d = torch.zeros_like(self.h)
            self.d += (xw.T @ (target.detach().reshape(x2.shape).float() - x2)).double()
        self.tokens += x2.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self.h * (2.0 / max(self.tokens, 1))

    @property
    def cross(self) -> torch.Tensor | None:
        return None if self.d is None else self.d * (2.0 / max(self.tokens, 1))


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
    h, dead = _conditioned(h, percdamp, shrinkage, where)
    factor = _cholesky(h, "H + λI", percdamp, where, tokens)
    u = _cholesky(torch.cholesky_inverse(factor), "(H + λI)⁻¹", percdamp, where, tokens)
    return u.T.contiguous(), dead  # upper factor: (H+λI)⁻¹ = Uᵀ U


def float_target(w: torch.Tensor, h: torch.Tensor, d: torch.Tensor, alpha: float,
                 percdamp: float, shrinkage: float, where: str, tokens: int) -> torch.Tensor:
    """The weight [N, K] whose output on the quantized model's inputs X best reproduces the
    float model's output X̃ Wᵀ (GPTAQ's asymmetric calibration, Li et al. 2025), blended by
    ``alpha``: W + α W Dᵀ (H' + λI)⁻¹, with H = 2XᵀX/n, D = 2Xᵀ(X̃ - X)/n and H' as in
    ``inverse_cholesky``. At α = 1, ||X̃ Wᵀ - X Qᵀ||² = ||X W'ᵀ - X Qᵀ||² + const for every
    Q, so GPTQ solving W' against H solves the float-target problem."""
    h, _ = _conditioned(h, percdamp, shrinkage, where)
    factor = _cholesky(h, "H + λI", percdamp, where, tokens)
    shift = torch.cholesky_solve(d @ w.double().T, factor).T  # (M⁻¹ D Wᵀ)ᵀ = W Dᵀ M⁻¹
    return (w.double() + alpha * shift).to(w.dtype)


def _conditioned(h: torch.Tensor, percdamp: float, shrinkage: float,
                 where: str) -> tuple[torch.Tensor, int]:
    """H' + λI (a copy) and the number of dead features (see ``inverse_cholesky``)."""
    h = h.clone()
    if shrinkage:
        diag = torch.diagonal(h).clone()
        h.mul_(1.0 - shrinkage).diagonal().copy_(diag)
    if not torch.isfinite(h).all():
        raise HessianError(
            f"GPTQ: the Hessian of {where} holds NaN or Inf (its input overflowed on the "
            "calibration data); check the model and the batches, or keep this layer float")
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(percdamp * torch.diagonal(h).mean())
    return h, int(dead.sum())


def _cholesky(h: torch.Tensor, what: str, percdamp: float, where: str,
              tokens: int) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        k = h.shape[0]
        raise HessianError(
            f"GPTQ: {what} of {where} is not positive definite (Cholesky fails at column "
            f"{int(info) - 1} of {k}) with percdamp={percdamp}; the layer saw {tokens} "
            f"calibration tokens for {k} input features. Raise GPTQ.percdamp (e.g. to "
            f"{max(10 * percdamp, 0.01):g}) or give more calibration data")
    return factor
