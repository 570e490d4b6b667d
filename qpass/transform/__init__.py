"""Graph transforms that run between capture and convert (registered in ``qpass.passes``)."""

# importing the modules registers the "awq", "gptq" and "smoothquant" passes
from qpass.transform import awq, gptq, smoothquant  # noqa: F401
