from qpass.observe import minmax  # noqa: F401  (registers the built-in observers)
from qpass.observe.observer import OBSERVERS, Observer, make_observer

__all__ = ["OBSERVERS", "Observer", "make_observer"]
