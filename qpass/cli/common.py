"""What every ``qpass`` subcommand shares: exit codes, errors, models, text, output folders."""

from __future__ import annotations

import argparse
import importlib
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("qpass.cli")

# Exit codes of the qpass command (documented in `qpass --help` and the README).
EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error inside qpass (a bug: the traceback is printed)
EXIT_USAGE = 2  # bad command line, invalid recipe or option value (argparse uses 2 too)
EXIT_NOT_FOUND = 3  # a model, recipe file, text file or saved model does not exist
EXIT_OUTPUT = 4  # an output folder or file cannot be written
EXIT_DEPENDENCY = 5  # an optional package is missing (the message says what to install)
EXIT_MODEL = 6  # the model could not be captured, calibrated, quantized or exported
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0  success
  1  unexpected error inside qpass (a bug; the traceback is printed)
  2  bad command line, invalid recipe (unknown key, bad value) or option value
  3  a model, recipe file, text file or saved model does not exist
  4  an output folder or file cannot be written
  5  an optional package is missing (the message says what to install)
  6  the model could not be captured, calibrated, quantized or exported
"""


class CliError(Exception):
    """An error the command line reports as one message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_model_args(p: argparse.ArgumentParser, text: bool = True) -> None:
    p.add_argument("--model", default="smollm2-135m", metavar="NAME|PKG.MODULE:FACTORY",
                   help="built-in model (smollm2-135m, minilm) or a factory returning "
                        "qpass.eval.LoadedModel (default: %(default)s)")
    p.add_argument("--window", type=int, default=None, metavar="TOKENS",
                   help="tokens per window (default: 512 for causal LMs, 128 for encoders)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    if text:
        p.add_argument("--calib-text", type=Path, default=None, metavar="FILE",
                       help="UTF-8 text to calibrate on (default: the built-in Wikipedia text)")
        p.add_argument("--eval-text", type=Path, default=None, metavar="FILE",
                       help="UTF-8 text to evaluate on (default: the held-out half of the "
                            "built-in Wikipedia text, disjoint from its calibration half)")


def load_any_model(spec: str) -> Any:
    """A LoadedModel from a registered name or a ``pkg.module:factory`` path."""
    from qpass.eval import LoadedModel, load_model

    if ":" not in spec:
        try:
            return load_model(spec)
        except KeyError as exc:
            raise CliError(f"{exc.args[0]} Or give a factory as pkg.module:function.",
                           EXIT_NOT_FOUND) from None
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CliError(f"model factory {spec!r}: module {module_name!r} cannot be imported "
                       f"({exc}); is its package installed and on PYTHONPATH?",
                       EXIT_NOT_FOUND) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CliError(f"model factory {spec!r}: {module_name!r} has no function {attr!r}",
                       EXIT_NOT_FOUND)
    loaded = factory()
    if not isinstance(loaded, LoadedModel):
        raise CliError(f"model factory {spec!r} returned {type(loaded).__name__}; it must return "
                       "a qpass.eval.LoadedModel (module, tokenizer, example_inputs, "
                       "dynamic_shapes, kind)", EXIT_USAGE)
    return loaded


def writable_folder(folder: Path, flag: str = "--out") -> Path:
    """Create ``folder`` and prove a file can be written there, before any long work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".qpass-write-test-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"{flag} {str(folder)!r} cannot be written ({exc.strerror or exc}); "
                       f"choose a folder you can write to", EXIT_OUTPUT) from None
    return folder


def writable_file(path: Path, flag: str) -> Path:
    writable_folder(path.parent if str(path.parent) else Path("."), flag)
    if path.is_dir():
        raise CliError(f"{flag} {str(path)!r} is a folder; give a file name", EXIT_OUTPUT)
    return path


def print_table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """A Markdown table on stdout (the CLI's results; logs go to stderr)."""
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
