"""The Hessians GPTQ solves with beyond XᵀX: attention-weighted ones for value projections,
residual-weighted ones for linears that write into the residual stream, and the layer-wise
walk's look-ahead they are computed from. References are written here in float64."""

from __future__ import annotations

import torch

import qpass
from qpass.config import PerGroup, QuantSpec
from qpass.quantizable import find_sites
from qpass.transform.attention_values import attention_probs, find_value_paths, value_hessians
from qpass.transform.gptq_solver import gptq_quantize
from qpass.transform.hessian import Hessian
from qpass.transform.layerwise import LayerwiseWalk
from tests.transform.toy_models import tiny_llama

SDPA = torch.ops.aten.scaled_dot_product_attention.default


def _llama():
    model = tiny_llama()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 128, (2, 16), generator=g),) for _ in range(2)]
    return model, qpass.capture(model, batches[0]), batches


def test_value_paths_are_found_from_the_graph_with_their_kv_heads():
    _, gm, _ = _llama()
    paths = find_value_paths(find_sites(gm))
    assert sorted(s.fqn for s in find_sites(gm) if s.node in paths) == [
        "model.model.layers.0.self_attn.v_proj", "model.model.layers.1.self_attn.v_proj"]
    for p in paths.values():  # 2 KV heads of 16 channels, each read by 2 of the 4 query heads
        assert p.heads == ((0, 1), (2, 3))
        assert [r.tolist() for r in p.rows] == [list(range(16)), list(range(16, 32))]


def test_attention_probs_reproduce_sdpa_and_value_hessians_the_exact_loss():
    _, gm, batches = _llama()
    sites = find_sites(gm)
    paths = find_value_paths(sites)
    site = next(s for s in sites if s.node in paths)
    path = paths[site.node]
    walk = LayerwiseWalk(gm, batches)
    seen = {}

    def before(node):
        args = path.sdpa.args
        seen["x"] = walk.values(site.activation_node)
        seen["q"], seen["k"], seen["v"] = (walk.peek(a) for a in args[:3])
        seen["mask"] = walk.peek(args[3]) if len(args) > 3 else [None] * len(batches)
        seen["out"] = walk.peek(path.sdpa)

    walk.run([site.node], before)
    for q, k, v, mask, out in zip(seen["q"], seen["k"], seen["v"], seen["mask"], seen["out"],
                                  strict=True):
        probs = attention_probs(q, k, path.sdpa, mask)
        torch.testing.assert_close((probs @ v.double()).float(), out, rtol=1e-4, atol=1e-5)
    parts = value_hessians(path, seen["x"], seen["q"], seen["k"], seen["mask"])
    # loss of a random weight error D on the attention output, against tr(D H Dᵀ)
    d = torch.randn(32, seen["x"][0].shape[-1], dtype=torch.float64)
    for (rows, h), heads in zip(parts, path.heads, strict=True):
        loss, n = 0.0, 0
        for x, q, k, mask in zip(seen["x"], seen["q"], seen["k"], seen["mask"], strict=True):
            probs = attention_probs(q, k, path.sdpa, mask)
            dv = x.double() @ d[rows].T  # [B, S, rows]: the value error of these rows
            for head in heads:
                loss += (probs[:, head] @ dv).pow(2).sum().item()
                n += probs.shape[0] * probs.shape[2]
        quad = ((d[rows] @ h) * d[rows]).sum().item()
        assert abs(quad - 2 * loss / n) <= 1e-6 * abs(quad)


def test_peek_computes_ahead_without_changing_the_walk():
    model, gm, batches = _llama()
    sites = find_sites(gm)
    first, last = sites[0], sites[-1]  # q_proj of layer 0, lm_head
    walk = LayerwiseWalk(gm, batches)
    seen = {}

    def before(node):
        if node is first.node:
            seen["ahead"] = walk.peek(last.node)
        else:
            seen["x"] = walk.values(last.activation_node)

    walk.run([first.node, last.node], before)
    for ahead, x in zip(seen["ahead"], seen["x"], strict=True):
        torch.testing.assert_close(ahead, model.model.lm_head(x), rtol=1e-5, atol=1e-5)


def test_row_hessians_solve_each_row_set_as_its_own_matrix():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 64, generator=g) * 0.05
    xa, xb = torch.randn(300, 64, generator=g), torch.randn(300, 64, generator=g) * 3
    ha, hb = (2 * x.double().T @ x.double() / 300 for x in (xa, xb))
    spec = QuantSpec("int4", symmetric=False, granularity=PerGroup(32))
    rows = torch.arange(8, 16)
    mixed = gptq_quantize(w, ha, spec, row_hessians=[(rows, hb)]).weight
    plain = gptq_quantize(w, ha, spec).weight
    alone = gptq_quantize(w[rows], hb, spec).weight
    rest = torch.cat([torch.arange(8), torch.arange(16, 24)])
    assert torch.equal(mixed.q[:, rows], alone.q)
    assert torch.equal(mixed.scale[:, rows], alone.scale)
    assert torch.equal(mixed.q[:, rest], plain.q[:, rest])
    assert not torch.equal(mixed.q[:, rows], plain.q[:, rows])


def test_weighted_hessian_matches_a_float64_reference():
    g = torch.Generator().manual_seed(2)
    x, wt = torch.randn(2, 50, 16, generator=g), torch.rand(2, 50, generator=g)
    h = Hessian.empty(16)
    h.update(x, wt)
    x2, w2 = x.reshape(-1, 16).double(), wt.reshape(-1).double()
    torch.testing.assert_close(h.value, 2 * (x2 * w2[:, None]).T @ x2 / 100, rtol=1e-5,
                               atol=1e-6)  # float32 products, as documented
