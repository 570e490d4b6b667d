"""The precision report: one plain, JSON-ready row per site saying what it got and why."""

import json

import pytest
import torch

import qpass
from qpass.config import LayerPrecision
from qpass.policies import LlmInt8, Rule, Rules, Sensitivity
from tests.toy_models import tiny_lm, token_batches


def test_report_says_precision_and_why_for_every_site():
    model = tiny_lm()
    with torch.no_grad():
        model.embed.weight[:, 7] = 20.0  # an outlier column at up's input
    batches = token_batches(2)
    recipe = qpass.resolve_recipe("w8a8_dynamic").replace(policies=(
        Sensitivity(keep_worst=0, probes=4),
        Rules((Rule("down", precision=LayerPrecision(), name="down float"),)),
        LlmInt8(6.0)))
    prepared = qpass.prepare(model, recipe, (batches[0],), calib_data=batches)
    rows = {r["fqn"]: r for r in qpass.precision_report(prepared)}
    assert list(rows) == ["up", "down", "lm_head"]
    up, down, head = rows["up"], rows["down"], rows["lm_head"]
    assert up["op"] == "linear" and up["weights"] == 64 * 32 and not up["float"]
    assert up["outliers"] == {"threshold": 6.0, "mode": "static", "columns": [7]}
    assert up["float_weights"] == 64 and down["float_weights"] == 32 * 64  # column 7 of up
    assert head["float_weights"] == head["weights"]
    assert up["precision"] == ("W int8 per_channel | A int8 per_token dyn + LLM.int8() split "
                               "(|x| > 6, 1 float columns)")
    assert up["assigned_by"] == ["uniform", "llm_int8"]
    assert up["sensitivity"]["rank"] in (1, 2) and up["sensitivity"]["score"] > 0
    assert down["float"] and down["reason"] == "rule 0 (down float)"
    assert down["assigned_by"] == ["uniform", "rules"] and down["outliers"] is None
    assert head["float"] and head["reason"] == "keep_float pattern 'lm_head'"
    assert head["sensitivity"] is None and head["weight"] is None
    assert up["weight"]["format"] == "int8" and up["activation"]["dynamic"] is True
    json.dumps(list(rows.values()))  # plain data
    converted = qpass.convert(prepared)
    assert qpass.precision_report(converted) == list(rows.values())


def test_report_needs_a_prepared_graph():
    with pytest.raises(ValueError, match=r"qpass.precision_report needs a GraphModule returned "
                                         r"by qpass.prepare"):
        qpass.precision_report(torch.nn.Linear(2, 2))
