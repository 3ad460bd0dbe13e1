"""Worker: a model whose blocks PP does not divide, imported, loaded and exported at that PP.

In one TP x PP world every rank: imports MODEL_DIR (published layout), loads
the result and the plain directory itself as SEDDModel stages, computes their full-vocabulary
log-scores on random inputs, and exports the imported checkpoint back to the published layout.
The plain twin's log-scores (one process, no Megatron) are the reference. Rank 0 prints
``RESULT {json}``: the log-score differences, the global layer numbers each stage held and the
pipeline split the saved args record (and the model config pretrain_sedd.py builds from them).

    torchrun --nproc_per_node=2 uneven_pipeline.py MODEL_DIR OUT_ROOT --pp 2
"""

import argparse
import json
from pathlib import Path

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out_root", type=Path)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sedd_megatron import runtime

    with runtime.world(tp=args.tp, pp=args.pp):
        result = run(args)
        if torch.distributed.get_rank() == 0:
            print("RESULT " + json.dumps(result), flush=True)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def imported_tokens(args) -> int:
    return int(args.vocab_size)  # import writes NullTokenizer args with the data vocabulary


def run(args) -> dict:
    from sedd_megatron.checkpoint import (
        export_checkpoint,
        import_checkpoint,
        load_sedd_model,
        read_checkpoint_args,
    )
    from sedd_megatron.checkpoint.verify import random_inputs
    from sedd_megatron.models.score_model import MegatronScoreModel, PlainScoreModel
    from sedd_megatron.training.step import sedd_config_from_args

    megatron, plain = args.out_root / "megatron", args.out_root / "plain"
    import_checkpoint(args.model_dir, megatron, tp=args.tp, pp=args.pp)
    reference = PlainScoreModel.from_pretrained(args.model_dir)
    x_t, sigma = random_inputs(reference.model.config, batch=3, seed=7)
    expected = reference.full_log_score(x_t, sigma)
    result = {}
    for name, source in (("megatron", megatron), ("plain", args.model_dir)):
        model, info = load_sedd_model(source)
        got = MegatronScoreModel(model, info).full_log_score(x_t, sigma)
        result[f"{name}_max_abs"] = max_abs(got, expected)
        result[f"{name}_scale"] = expected.abs().max().item()
        layers = [layer.layer_number for layer in model.decoder.layers]
        stages = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(stages, layers)
        result[f"{name}_stage_layers"] = stages
    export_checkpoint(megatron, plain)
    saved = read_checkpoint_args(megatron)
    # pretrain_sedd.py's model provider builds its config from the args with this function
    provider = sedd_config_from_args(saved, imported_tokens(saved))
    result["provider_split"] = [
        provider.num_layers_in_first_pipeline_stage,
        provider.num_layers_in_last_pipeline_stage,
    ]
    result.update(
        plain_out=str(plain),
        saved_split=[
            saved.decoder_first_pipeline_num_layers,
            saved.decoder_last_pipeline_num_layers,
        ],
        saved_pp=saved.pipeline_model_parallel_size,
    )
    return result


if __name__ == "__main__":
    main()
