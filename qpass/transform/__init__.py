"""Graph transforms that run between capture and convert (registered in ``qpass.passes``)."""

from qpass.transform import smoothquant  # noqa: F401  (registers the "smoothquant" pass)
