"""A tiny causal LM with a character tokenizer, loadable as ``--model tests.cli.toy_factory:load``.

Lets the CLI tests run the whole job (capture, quantize, save, ONNX, report) in seconds and
without any model package.
"""

import torch
from torch.export import Dim

from qpass.eval import LoadedModel
from tests.toy_models import TinyLM


class CharTokenizer:
    """Bytes of the text, folded into the toy vocabulary."""

    name_or_path = "qpass-test-char-tokenizer"
    vocab = 50

    def __call__(self, texts, add_special_tokens=False, **_):
        return {"input_ids": [[b % self.vocab for b in t.encode("utf-8")] for t in texts]}

    def __len__(self) -> int:
        return self.vocab


def load() -> LoadedModel:
    torch.manual_seed(0)
    module = TinyLM().eval()
    ids = torch.randint(0, 50, (2, 16))
    return LoadedModel(name="toy-lm", module=module, tokenizer=CharTokenizer(),
                       example_inputs=(ids,),
                       dynamic_shapes=({0: Dim("batch", min=1, max=64),
                                        1: Dim("seq", min=2, max=1024)},),
                       kind="causal_lm")


def not_a_loaded_model():
    return torch.nn.Linear(2, 2)
