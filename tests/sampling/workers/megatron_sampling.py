"""Worker: the sampler engine on SEDDModel at a TP/PP layout (torchrun, gloo on CPU).

For each conformance model it prints the float64 samples of a fixed batch (seed 7, sample ids
0..2, a prefix/suffix prompt on row 1, predictors analytic/euler/none); with ``--conformance``
(TP = 1) also the teacher-forced weights against the reference's recorded weights and the
float32 replay of the reference's draws. Rank 0 prints ``RESULT {json}``.

    torchrun --nproc_per_node=N megatron_sampling.py CONFORMANCE_DIR --tp T --pp P [--conformance]
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.sampling.cases import SAMPLE_CASES, conformance_report, sample_case  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("conformance_dir")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--conformance", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sedd_megatron import runtime
    from sedd_megatron.checkpoint import open_model

    with runtime.world(tp=args.tp, pp=args.pp, seed=1234):
        result = {}
        for name in ("tiny_absorb", "tiny_uniform"):
            model = open_model(Path(args.conformance_dir) / name, backend="megatron")
            for predictor in SAMPLE_CASES:
                x = sample_case(model, predictor)
                result[f"{name}/{predictor}"] = x.tolist()
            if args.conformance:
                result.update(conformance_report(model, Path(args.conformance_dir), name))
        if torch.distributed.get_rank() == 0:
            print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
