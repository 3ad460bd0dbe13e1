"""Worker: reused scores on SEDDModel at a TP/PP layout (torchrun, gloo on CPU).

Opens the time-independent model directory MODEL_DIR with the Megatron backend and samples
ids 0..2 (seed 7, length 16, 48 analytic steps) with reuse on and off. Rank 0 prints
``RESULT {json}``: the tokens of both runs and every rank's sampler counts (all ranks of a
replica must skip the same forward passes).

    torchrun --nproc_per_node=N reuse_sampling.py MODEL_DIR --tp T --pp P
"""

import argparse
import json

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sedd_megatron import runtime
    from sedd_megatron.checkpoint import open_model
    from sedd_megatron.sampling import Sampler, SamplingOptions

    with runtime.world(tp=args.tp, pp=args.pp, seed=1234):
        model = open_model(args.model_dir, backend="megatron", seq_length=16)
        result = {"time_independent": model.time_independent}
        for reuse in (True, False):
            sampler = Sampler(model, SamplingOptions(steps=48, reuse_unchanged=reuse))
            x = sampler.sample(None, [0, 1, 2], 7)
            result[f"tokens_{reuse}"] = x.cpu().tolist()
            stats = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(stats, sampler.stats)
            result[f"stats_{reuse}"] = stats
        if torch.distributed.get_rank() == 0:
            print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
