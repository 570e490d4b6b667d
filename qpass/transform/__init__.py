"""Graph transforms that run between capture and convert (registered in ``qpass.passes``)."""

# importing the modules registers the "awq", "gptq", "hadamard", "quantize_embeddings" and
# "smoothquant" passes
from qpass.transform import awq, embeddings, gptq, hadamard, smoothquant  # noqa: F401
