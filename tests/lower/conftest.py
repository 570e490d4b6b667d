"""Without a GPU, the triton kernels run in triton's CPU interpreter.

``TRITON_INTERPRET`` is read when a kernel module is imported (``triton.jit``); qpass imports
its triton modules on first use, so setting it here, at collection, reaches all of them.
With a GPU the variable stays unset: the ``gpu`` tests run the compiled kernels and the
interpreter tests skip.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
