"""qpass's built-in precision policies (importing this package registers them).

- ``rules``: glob or regex on module FQN and op type -> precision (``Rules``, ``Rule``);
- ``keep_sensitive``: embeddings, the output head and named layers stay float;
- ``sensitivity``: the layers whose quantization changes the output most stay float;
- ``llm_int8``: LLM.int8() outlier columns stay float, the rest goes int8.

``uniform`` and ``keep_float`` (the recipe's own defaults) and the ``Policy`` base live in
``qpass.policy``. ``precision_report`` says which precision each site got and why.
"""

from qpass.policies.keep_sensitive import KeepSensitive
from qpass.policies.llm_int8 import VECTOR_WISE_INT8, LlmInt8
from qpass.policies.report import describe_precision, precision_report
from qpass.policies.rules import Rule, Rules
from qpass.policies.sensitivity import Sensitivity
from qpass.policy import POLICIES, KeepFloat, Policy, PolicyContext, Uniform

__all__ = ["POLICIES", "VECTOR_WISE_INT8", "KeepFloat", "KeepSensitive", "LlmInt8", "Policy",
           "PolicyContext", "Rule", "Rules", "Sensitivity", "Uniform", "describe_precision",
           "precision_report"]
