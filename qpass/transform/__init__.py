"""Graph transforms that run between capture and convert (registered in ``qpass.passes``)."""

# importing the modules registers the "awq", "gptq", "quantize_embeddings" and "smoothquant"
# passes
from qpass.transform import awq, embeddings, gptq, smoothquant  # noqa: F401
