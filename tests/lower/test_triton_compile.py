"""The triton kernels compile for Hopper (sm_90) with the configs the GPU path uses.

Triton compiles to a cubin without a GPU, so this catches what the interpreter cannot: code
the compiler rejects, shared memory beyond an H100 block's, int8 GEMMs that miss the int8
tensor cores. It runs tests/lower/compile_kernels.py in its own process (see there why).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'qpass[gpu]')")

ROOT = Path(__file__).resolve().parents[2]


def test_every_triton_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "tests.lower.compile_kernels"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 11, run.stdout
    assert sum("s8 x s8 -> s32" in line for line in lines) == 3, run.stdout
