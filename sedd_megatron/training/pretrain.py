"""pretrain_sedd.py: train SEDD with megatron.training.pretrain (Megatron-Core 0.19.2).

    torchrun --nproc_per_node=N pretrain_sedd.py [--config FILE.yaml] <Megatron flags> <SEDD flags>

On a machine without CUDA it runs on CPU over gloo (sedd_megatron.runtime; development only).
"""

import json
import os
import sys
import time

from sedd_megatron.atomic import atomic_open
from sedd_megatron.errors import ConfigError

_START = time.time()


def _fail(message: str) -> None:
    print(f"pretrain_sedd.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_data_paths(args) -> None:
    """Every data prefix must have its .bin and .idx (a clear error instead of a deep trace)."""
    if getattr(args, "mock_data", False):
        return
    prefixes = []
    for name in ("data_path", "train_data_path", "valid_data_path", "test_data_path"):
        value = getattr(args, name, None) or []
        prefixes += [v for v in value if not _is_number(v)]
    if not prefixes and not getattr(args, "data_args_path", None):
        raise ConfigError("no training data: give --data-path (or --mock-data)")
    for prefix in prefixes:
        missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            raise ConfigError(
                f"data prefix {prefix!r}: {' and '.join(prefix + e for e in missing)} not found "
                "(build it with tools/preprocess_data.py)"
            )


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def summarize(args) -> dict:
    """Where the checkpoint is, tokens/s, final training and validation loss (nats/token)."""
    from sedd_megatron.training.hooks import HISTORY  # lazy: imports megatron

    train = HISTORY["train"]
    summary = {"checkpoint": args.save, "iterations": args.curr_iteration + 1 if train else 0}
    if len(train) >= 2:
        steps = len(train) - 1
        seconds = train[-1]["time"] - train[0]["time"]
        tokens = steps * args.global_batch_size * args.seq_length
        summary["tokens_per_second"] = tokens / seconds if seconds > 0 else None
    if train:
        summary["final_train_loss"] = train[-1]["loss"]
    for split in ("valid", "test"):
        losses = [r["loss"] for r in HISTORY["valid"] if r["split"] == split]
        if losses:
            summary[f"final_{split}_loss"] = losses[-1]
    if HISTORY["valid"]:
        summary["eval_with_ema"] = bool(args.eval_with_ema and args.ema_decay > 0)
    return summary


def main(argv: list[str] | None = None) -> None:
    import torch

    from sedd_megatron.runtime.distributed import single_process_env  # lazy: torch after _START

    single_process_env()

    from sedd_megatron.runtime import (  # lazy: torch after _START
        apply_upstream_fixes,
        enable_cpu_megatron,
    )
    from sedd_megatron.runtime.upstream_fixes import (  # lazy: torch after _START
        DatasetHelpersError,
        load_dataset_helpers,
    )

    if enable_cpu_megatron():
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    apply_upstream_fixes()
    try:  # here, on every rank: Megatron builds them on rank 0 only, the others would hang
        load_dataset_helpers()
    except DatasetHelpersError as err:
        _fail(str(err))

    from megatron.core.enums import ModelType
    from megatron.training import pretrain, set_startup_timestamps
    from megatron.training.argument_utils import pretrain_cfg_container_from_args

    from sedd_megatron.datasets.sedd_dataset import (  # lazy: megatron, after the CPU shim
        train_valid_test_datasets_provider,
    )
    from sedd_megatron.training.arguments import parse_args  # lazy: torch after _START
    from sedd_megatron.training.hooks import install_training_hooks  # lazy: imports megatron
    from sedd_megatron.training.step import (  # lazy: megatron, after the CPU shim
        make_forward_step,
        model_provider,
    )

    set_startup_timestamps(program_start=_START, main_entry=time.time())
    try:
        args = parse_args(argv)
        check_data_paths(args)
    except (ConfigError, AssertionError, ValueError) as err:
        _fail(str(err) or repr(err))
    install_training_hooks()
    pretrain(
        pretrain_cfg_container_from_args(args),
        train_valid_test_datasets_provider,
        ModelType.encoder_or_decoder,
        make_forward_step(args),
        model_provider=model_provider,
    )
    summary = summarize(args)
    if torch.distributed.get_rank() == torch.distributed.get_world_size() - 1:
        print("SEDD training summary: " + json.dumps(summary), flush=True)
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            with atomic_open(os.path.join(args.save, "sedd_summary.json")) as f:
                json.dump(summary, f, indent=2)
