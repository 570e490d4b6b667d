"""The benchmarks' shared protocol options and calibration batches (no model loaded)."""

import argparse
from pathlib import Path

import pytest
import torch

from qpass.bench_setup import BenchSetup, add_protocol_args, bench_parser


def test_protocol_defaults_and_out_folder():
    p = argparse.ArgumentParser()
    add_protocol_args(p, "bench_x")
    a = p.parse_args([])
    assert (a.calib_windows, a.eval_windows, a.window, a.threads) == (8, 12, 512, 2)
    assert a.out == Path("exports/bench_x")
    assert p.parse_args(["--window", "64", "--out", "o"]).window == 64


def test_batches_are_the_calibration_windows_one_by_one():
    calib = torch.arange(12).reshape(3, 4)
    setup = BenchSetup(None, calib, calib[:1], (calib[:1],), None)
    batches = setup.batches
    assert len(batches) == 3 and all(len(b) == 1 and b[0].shape == (1, 4) for b in batches)
    assert torch.equal(torch.cat([b[0] for b in batches]), calib)


def test_bench_parser_takes_a_known_model_and_refuses_others(capsys):
    p = bench_parser("qpass.bench_x", "doc", {"smollm2": "smollm2-135m"})
    assert p.prog == "python -m qpass.bench_x" and p.parse_args(["smollm2"]).model == "smollm2"
    with pytest.raises(SystemExit):
        p.parse_args(["gpt2"])
    assert "invalid choice: 'gpt2'" in capsys.readouterr().err
