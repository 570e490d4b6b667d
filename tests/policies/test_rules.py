"""The rules policy: glob and regex matching, last-rule-wins precedence, warnings, round trip."""

import warnings

import pytest
import torch

import qpass
from qpass.config import LayerPrecision, PerGroup, QuantSpec
from qpass.policies import Rule, Rules
from tests.toy_models import tiny_lm, token_batches

INT4 = LayerPrecision(QuantSpec("int4", granularity=PerGroup(16)))
FLOAT = LayerPrecision()


def _precisions(*rules, recipe="w8a16"):
    r = qpass.resolve_recipe(recipe).replace(policies=(Rules(tuple(rules)),))
    batches = token_batches(2)
    prepared = qpass.prepare(tiny_lm(), r, (batches[0],))
    state = prepared.meta["qpass"]
    return {state.fqns[n]: p for n, p in state.precisions.items()}, prepared


def test_last_matching_rule_wins_and_later_policies_override_earlier_ones():
    precs, _ = _precisions(Rule("*", precision=INT4), Rule("down", precision=FLOAT))
    assert precs["up"].weight.format == "int4"
    assert precs["down"].is_float and precs["down"].reason == "rule 1 (fqn='down')"
    # the Rules policy runs after keep_float, so its catch-all rule quantizes lm_head too
    assert precs["lm_head"].weight.format == "int4"


def test_regex_rules_match_the_whole_fqn_and_the_op_type():
    with pytest.warns(UserWarning, match=r"rule 1 \(partial\) matched no quantizable op"):
        precs, _ = _precisions(Rule(r"(up|down)", syntax="regex", op="lin.*", precision=INT4),
                               Rule(r"u", syntax="regex", precision=FLOAT, name="partial"))
    assert precs["up"].weight.format == "int4" and precs["down"].weight.format == "int4"
    assert precs["lm_head"].is_float  # keep_float; the 'u' regex matches no whole FQN


def test_a_rule_that_matches_nothing_warns_naming_the_rule():
    with pytest.warns(UserWarning, match=r"rule 1 \(mlp-typo\) matched no quantizable op"):
        _precisions(Rule("up", precision=INT4), Rule("mpl.*", precision=FLOAT, name="mlp-typo"))
    with pytest.warns(UserWarning, match=r"rule 0 \(fqn='\*' op='conv'\)"):
        _precisions(Rule("*", op="conv", precision=INT4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _precisions(Rule("up", precision=INT4))


def test_rules_quantize_with_the_assigned_format():
    _, prepared = _precisions(Rule("up", precision=INT4))
    q = qpass.convert(prepared)
    up = q.get_buffer("qpass_up_weight_q")
    assert int(up.min()) >= -8 and int(up.max()) <= 7  # int4 codes
    ids = token_batches(1, seed=5)[0]
    with torch.no_grad():
        err = (q(ids) - tiny_lm()(ids)).abs().max()
    assert 1e-4 < err < 0.5


def test_rules_round_trip_through_recipe_dicts():
    policy = Rules((Rule("*.mlp.*", precision=INT4, name="mlp"),
                    Rule(r".*\.q_proj", syntax="regex", op="linear", precision=FLOAT)))
    recipe = qpass.resolve_recipe("w8a8_dynamic").replace(policies=(policy,))
    assert qpass.Recipe.from_dict(recipe.to_dict()) == recipe


def test_invalid_rules_name_the_field():
    with pytest.raises(ValueError, match=r"Rule.syntax='sql'.*glob, regex"):
        Rule("x", syntax="sql")
    with pytest.raises(ValueError, match=r"Rule.fqn='\(unclosed'.*regular expression"):
        Rule("(unclosed", syntax="regex")
    with pytest.raises(ValueError, match=r"Rule.op=''"):
        Rule("x", op="")
    with pytest.raises(ValueError, match=r"Rules.rules=.*tuple of qpass.policies.Rule"):
        Rules([Rule("x")])
    d = qpass.resolve_recipe("w8a16").to_dict()
    d["policies"] = [{"type": "rules", "rules": [{"fqn": "x", "sintax": "glob"}]}]
    with pytest.raises(ValueError, match=r"recipe.policies\[0\].rules\[0\].sintax.*'syntax'"):
        qpass.Recipe.from_dict(d)
