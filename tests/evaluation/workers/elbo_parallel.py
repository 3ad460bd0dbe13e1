"""Worker: the ELBO of the conformance blocks through the Megatron SEDDModel at several layouts.

    torchrun --nproc_per_node=2 elbo_parallel.py MODEL_DIR TOKENS --layouts tp2,pp2,dp2

One process group; Megatron's model-parallel state is rebuilt for each layout (tpT / ppP /
dpD, the rest of the world being data parallel). Rank 0 prints ``RESULT {json}``: per layout
and design, every block's t, weights, counts and losses (also of the [0, t_eps] term:
"<design>:tail").
"""

import argparse
import json

import torch

DESIGNS = (("importance", 6, 2), ("mc", 3, None))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("tokens")
    parser.add_argument("--layouts", default="tp2,pp2,dp2")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from megatron.core import parallel_state
    from safetensors.torch import load_file

    from sedd_megatron.checkpoint import open_model
    from sedd_megatron.evaluation import evaluate_elbo
    from sedd_megatron.runtime import world

    tokens = load_file(args.tokens)["tokens"]
    out = {}
    with world(seed=1234):  # the process group; each layout replaces the model-parallel state
        for layout in args.layouts.split(","):
            size = int(layout[2:])
            tp, pp = {"tp": (size, 1), "pp": (1, size), "dp": (1, 1)}[layout[:2]]
            if parallel_state.model_parallel_is_initialized():
                parallel_state.destroy_model_parallel()
            with world(tp=tp, pp=pp, seed=1234):
                scorer = open_model(args.model_dir, "megatron")
                out[layout] = {"dp": scorer.dp_size}
                for design, samples, replicates in DESIGNS:
                    result = evaluate_elbo(
                        scorer,
                        tokens,
                        design=design,
                        num_t_samples=samples,
                        replicates=replicates,
                        batch_size=4,
                        progress=False,
                        seed=11,
                    )
                    out[layout][design] = [b.to_dict(draws=True) for b in result.blocks]
                    out[layout][f"{design}:tail"] = [b.to_dict(draws=True) for b in result.tail]
        if torch.distributed.get_rank() == 0:
            print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
