# importing the modules registers the built-in observers
from qpass.observe import aciq, ema, kl, minmax, mse, percentile  # noqa: F401
from qpass.observe.observer import OBSERVERS, Observer, make_observer

__all__ = ["OBSERVERS", "Observer", "make_observer"]
