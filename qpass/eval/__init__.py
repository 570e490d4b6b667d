"""Evaluation: built-in real models, offline English text, perplexity."""

from qpass.eval.models import MODELS, LoadedModel, load_model
from qpass.eval.perplexity import perplexity
from qpass.eval.text import text_file_token_slices, wikipedia_token_slices

__all__ = [
    "MODELS",
    "LoadedModel",
    "load_model",
    "perplexity",
    "text_file_token_slices",
    "wikipedia_token_slices",
]
