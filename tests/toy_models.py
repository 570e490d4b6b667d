"""Small models for unit tests (real models are in tests/conftest.py fixtures)."""

import torch
from torch import nn


class TinyLM(nn.Module):
    """Embedding -> two linear blocks -> head: the shape of an LLM in miniature."""

    def __init__(self, vocab: int = 50, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = h + self.down(torch.relu(self.up(h)))
        return self.lm_head(h)


class Functional(nn.Module):
    """Weighted ops written functionally: F.linear, torch.mm, addmm, matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 8) * 0.3)  # linear: [out, in]
        self.w2 = nn.Parameter(torch.randn(16, 12) * 0.3)  # mm: [in, out]
        self.b3 = nn.Parameter(torch.randn(12) * 0.1)
        self.w3 = nn.Parameter(torch.randn(12, 12) * 0.3)  # addmm: [in, out]
        self.w4 = nn.Parameter(torch.randn(12, 6) * 0.3)  # matmul: [in, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.linear(x, self.w1)
        h = torch.mm(h, self.w2)
        h = torch.addmm(self.b3, h, self.w3)
        return torch.matmul(h, self.w4)


class DataDependent(nn.Module):
    """Python control flow on tensor values: neither capture method can trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 0:
            return self.lin(x)
        return x


def tiny_lm(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM().eval()


def token_batches(n: int, shape=(2, 8), vocab: int = 50, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, shape, generator=g) for _ in range(n)]
