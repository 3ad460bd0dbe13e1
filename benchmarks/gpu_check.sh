#!/usr/bin/env bash
# One GPU check of the whole user path on one GPU, in about four minutes, with one summary table:
# training benchmarks (SEDD-small and -medium, fused and unfused), pretrain_sedd.py --bf16 with a
# save, generate_sedd.py, eval_elbo_sedd.py and convert_checkpoint.py export --verify from that
# checkpoint (benchmarks/gpu_check.py lists the steps).
#
#   bash benchmarks/gpu_check.sh                          # this checkout
#   bash benchmarks/gpu_check.sh --baseline ../sedd-base  # + another checkout's training
#                                                         #   benchmark, same run, with ratios
#
# Works on a bare GPU machine: torch is whatever is installed (the checkout goes on PYTHONPATH;
# nothing is pip-installed over torch), and megatron-core (with any other wheel the machine
# lacks) is installed from .whl/ into a temporary directory when it does not import (docs/usage.md
# §10). PYTHON picks the interpreter (default: python3). Without CUDA it
# says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: torch does not import with $PY (set PYTHON to the interpreter to use)" >&2
    exit 1
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): skipped."
    exit 0
fi
if ! "$PY" -c 'import megatron.core' 2>/dev/null; then
    shopt -s nullglob
    wheels=(.whl/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "gpu_check: megatron-core does not import and .whl/ holds no wheels (see the" \
            "docs/usage.md §10)" >&2
        exit 1
    fi
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
