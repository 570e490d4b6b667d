"""Scale groups are found from the graph: norms, producing linears through attention and
SwiGLU, and the groups that have no exact fold."""

from __future__ import annotations

import pytest
import torch

import qpass
from qpass.quantizable import find_sites
from qpass.transform.groups import LinearFold, NormFold, find_scale_groups
from tests.transform.toy_models import PostNormBlock, tiny_llama

pytest.importorskip("transformers")


def _groups(model, x):
    gm = qpass.capture(model, (x,))
    sites = find_sites(gm)
    return {tuple(s.fqn.rsplit(".", 1)[-1] for s in g.consumers) + (g.consumers[0].fqn,): g
            for g in find_scale_groups(gm, sites)}


def test_llama_groups_and_folds():
    groups = _groups(tiny_llama(), torch.randint(0, 128, (1, 8)))
    kinds = {k[:-1]: [] for k in groups}
    for k, g in groups.items():
        kinds[k[:-1]].append(g.fold.kind if g.fold else None)
    assert kinds[("q_proj", "k_proj", "v_proj")] == ["scale_mul"] * 2
    assert kinds[("gate_proj", "up_proj")] == ["scale_mul"] * 2
    assert kinds[("o_proj",)] == ["linear"] * 2
    assert kinds[("down_proj",)] == ["linear"] * 2
    for k, g in groups.items():
        if k[:-1] == ("q_proj", "k_proj", "v_proj"):
            assert isinstance(g.fold, NormFold) and g.fold.fqn.endswith("input_layernorm")
        if k[:-1] == ("down_proj",):
            assert isinstance(g.fold, LinearFold) and g.fold.fqn.endswith("mlp.up_proj")
            assert torch.equal(g.fold.channel_map, torch.arange(128))


def test_gqa_channel_map_follows_repeat_kv():
    """4 query heads share 2 kv heads of 16 dims: o_proj channel h*16+d is fed by v_proj
    channel (h // 2)*16 + d."""
    groups = _groups(tiny_llama(), torch.randint(0, 128, (1, 8)))
    g = next(g for k, g in groups.items() if k[:-1] == ("o_proj",))
    h, d = torch.arange(4).repeat_interleave(16), torch.arange(16).repeat(4)
    assert g.fold.fqn.endswith("self_attn.v_proj")
    assert torch.equal(g.fold.channel_map, (h // 2) * 16 + d)


def test_post_norm_residual_has_no_fold_and_says_why():
    groups = _groups(PostNormBlock(), torch.randn(2, 5, 32))
    g = next(g for k, g in groups.items() if k[0] == "fc1")
    assert g.fold is None and "also feeds" in g.reason and "add" in g.reason
    g2 = next(g for k, g in groups.items() if k[0] == "fc2")
    assert g2.fold is None and "gelu" in g2.reason
