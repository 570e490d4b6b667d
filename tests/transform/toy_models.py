"""Small models with the shapes of real ones, for the transform tests (random weights)."""

from __future__ import annotations

import torch
from torch import nn


def tiny_llama(seed: int = 0, outlier: float = 1.0) -> nn.Module:
    """A 2-layer Llama (RMSNorm, GQA attention, SwiGLU MLP) returning logits.

    ``outlier`` scales a few channels of every norm weight and of up_proj's rows, the way
    real LLMs grow massive activations at a handful of channels.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
                p[:3] *= outlier
            if name.endswith("up_proj.weight"):
                p[:2] *= outlier
    return _Logits(model)


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


class PostNormBlock(nn.Module):
    """BERT-style: the LayerNorm output feeds the linears AND the residual add."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return h + self.fc2(torch.nn.functional.gelu(self.fc1(h)))
