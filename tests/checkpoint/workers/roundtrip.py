"""Worker: published layout -> Megatron (TP x PP) -> published layout, for the conformance models.

Every rank runs import_checkpoint (with verification) and export_checkpoint (gathering the
shards) in one TP x PP world, then imports tiny_absorb once more without EMA weights and checks
that asking for them fails. Rank 0 prints ``RESULT {json}``.

    torchrun --nproc_per_node=4 roundtrip.py OUT_ROOT --tp 2 --pp 2
"""

import argparse
import json
from pathlib import Path

import torch

CONFORMANCE = Path(__file__).resolve().parents[2] / "data" / "conformance"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_root", type=Path)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sedd_megatron import runtime

    with runtime.world(tp=args.tp, pp=args.pp):
        result = run(args)
        if torch.distributed.get_rank() == 0:
            print("RESULT " + json.dumps(result), flush=True)


def run(args) -> dict:
    """Every rank: the conversions in the running TP x PP world; the values to report."""
    from sedd_megatron.checkpoint import export_checkpoint, import_checkpoint, load_sedd_model
    from sedd_megatron.errors import CheckpointError

    result = {}
    for name in ("tiny_absorb", "tiny_uniform"):
        megatron, plain = args.out_root / f"{name}_megatron", args.out_root / f"{name}_plain"
        imported = import_checkpoint(
            CONFORMANCE / name, megatron, tp=args.tp, pp=args.pp, verify_outputs=True
        )
        exported = export_checkpoint(megatron, plain, verify_outputs=True)
        result[name] = {
            "megatron": str(megatron),
            "plain": str(plain),
            "import_difference": imported.max_relative_difference,
            "export_difference": exported.max_relative_difference,
            "export_ema": exported.info.ema,
            "export_iteration": exported.info.iteration,
        }

    no_ema = args.out_root / "no_ema_megatron"
    import_checkpoint(CONFORMANCE / "tiny_absorb", no_ema, tp=args.tp, pp=args.pp, ema_decay=0.0)
    try:
        load_sedd_model(no_ema, use_ema=True)
        result["no_ema_error"] = None
    except CheckpointError as err:
        result["no_ema_error"] = str(err)
    _, info = load_sedd_model(no_ema)
    result["no_ema_default_loads_ema"] = info.ema
    return result


if __name__ == "__main__":
    main()
