"""pretrain_sedd.py: train SEDD with megatron.training.pretrain (Megatron-Core 0.19.2).

    torchrun --nproc_per_node=N pretrain_sedd.py [--config FILE.yaml] <Megatron flags> <SEDD flags>

On a machine without CUDA it runs on CPU over gloo (sedd_megatron.runtime; development only).
"""

import json
import os
import sys
import time

from sedd_megatron import checksums
from sedd_megatron.atomic import atomic_open
from sedd_megatron.console import fail, quiet_third_party, restore_third_party_logging
from sedd_megatron.errors import ConfigError, SEDDError
from sedd_megatron.training.arguments import check_argv, flag_name

_START = time.time()


_DATA_FLAGS = ("data_path", "train_data_path", "valid_data_path", "test_data_path")


def check_data_sources(args) -> list[str]:
    """One data source (``--mock-data`` or data paths, not both), and every data prefix given
    has its .bin and .idx; returns the prefixes. Needs only the command line."""
    given = [flag_name(name) for name in _DATA_FLAGS if getattr(args, name, None)]
    if getattr(args, "mock_data", False):
        if given:
            raise ConfigError(
                f"--mock-data cannot be combined with {' / '.join(given)}: give one data source "
                "(Megatron's mock data, or the indexed dataset)"
            )
        return []
    prefixes = []
    for name in _DATA_FLAGS:
        value = getattr(args, name, None) or []
        prefixes += [v for v in value if not _is_number(v)]
    for prefix in prefixes:
        missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            raise ConfigError(
                f"data prefix {prefix!r}: {' and '.join(prefix + e for e in missing)} not found "
                "(build it with tools/preprocess_data.py)"
            )
    return prefixes


def check_data_paths(args, vocab_size: int | None = None) -> None:
    """:func:`check_data_sources`, some training data, and, given ``vocab_size`` (the
    tokenizer's), token ids below it: checked on each node's local rank 0 before Megatron
    builds (and caches) anything."""
    prefixes = check_data_sources(args)
    if getattr(args, "mock_data", False):
        return
    if not prefixes and not getattr(args, "data_args_path", None):
        raise ConfigError("no training data: give --data-path (or --mock-data)")
    if vocab_size is not None and os.environ.get("LOCAL_RANK", "0") == "0":
        from sedd_megatron.datasets.sedd_dataset import check_token_ids  # lazy: imports megatron

        for prefix in dict.fromkeys(prefixes):
            check_token_ids(prefix, vocab_size)


def check_load_paths(args) -> None:
    """Preflight of ``--load`` / ``--pretrained-checkpoint`` (sedd_megatron.checkpoint.safety):
    files that differ from the checkpoint's checksum manifest (unless
    ``--no-verify-checksums``), a corrupt tracker, a missing iteration, metadata that would run
    code, missing or truncated shards and unreadable legacy files are one CheckpointError here,
    before Megatron (which exits 0 or dies with a traceback on them) reads anything."""
    from sedd_megatron.checkpoint import safety  # lazy: torch, after the start-up timestamp
    from sedd_megatron.training.resume import check_resume_args  # lazy: as above

    if getattr(args, "non_persistent_ckpt_type", None) is not None:
        return  # Megatron may load a non-persistent checkpoint instead; it is checked then
    step = getattr(args, "ckpt_step", None) or None
    for name in ("load", "pretrained_checkpoint"):
        directory = getattr(args, name, None)
        if directory:
            iteration = step if name == "load" else None
            folder = load_folder(directory, iteration)
            if folder is not None and getattr(args, "verify_checksums", True):
                # first, so that a corrupt file is named as such; a note goes to Megatron's log
                checksums.verify_directory(folder, stream=sys.stdout)
            safety.check_load_dir(directory, iteration)
            if name == "load":
                check_resume_args(args, folder)


def load_folder(load_dir: str, iteration: int | None = None) -> str | None:
    """The iteration directory Megatron would load from ``load_dir`` (None: none, or not
    there; ``safety.check_load_dir`` reports what is wrong)."""
    from sedd_megatron.checkpoint import safety  # lazy: torch, after the start-up timestamp

    folder = safety.load_folder(load_dir, iteration)
    return str(folder) if folder is not None and folder.is_dir() else None


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
    iterations = args.curr_iteration + 1 if train else 0
    tokens_per_iteration = args.global_batch_size * args.seq_length
    summary = {
        "checkpoint": args.save,
        "iterations": iterations,
        "tokens_trained": iterations * tokens_per_iteration,
    }
    if len(train) >= 2:
        steps = len(train) - 1
        seconds = train[-1]["time"] - train[0]["time"]
        tokens = steps * tokens_per_iteration
        summary["tokens_per_second"] = tokens / seconds if seconds > 0 else None
    if train:
        summary["final_train_loss"] = train[-1]["loss"]
    for split in ("valid", "test"):
        losses = [r["loss"] for r in HISTORY["valid"] if r["split"] == split]
        if losses:
            summary[f"final_{split}_loss"] = losses[-1]
    if HISTORY["valid"]:
        summary["eval_with_ema"] = bool(args.eval_with_ema and args.ema_decay > 0)
        summary["validation"] = [
            {**r, "tokens": r["iteration"] * tokens_per_iteration} for r in HISTORY["valid"]
        ]
    return summary


def main(argv: list[str] | None = None) -> None:
    """pretrain_sedd.py: train a SEDD model."""
    run_training("pretrain_sedd.py", argv, _sedd_step_functions)


def _sedd_step_functions(args):
    from sedd_megatron.training.step import (  # lazy: megatron, after the CPU shim
        make_forward_step,
        model_provider,
    )

    return model_provider, make_forward_step(args)


def run_training(script: str, argv, step_functions, after=None, extra_checks=None) -> dict:
    """Start-up, argument and input checks, ``megatron.training.pretrain`` and the summary: the
    body of pretrain_sedd.py, shared with the autoregressive baseline.

    ``step_functions(args) -> (model_provider, forward_step)``, called once the arguments are
    parsed (it imports Megatron lazily); ``extra_checks(args)`` may raise ConfigError before
    anything is built; ``after(args, model_chunks) -> dict`` runs on every rank once training
    is over, and its entries join the summary. Bad input exits 2 with one line naming
    ``script``. Returns the summary.
    """
    quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all
    try:  # what the command line alone settles, before torch and Megatron load (~10 s)
        check_data_sources(check_argv(sys.argv[1:] if argv is None else argv))
    except ConfigError as err:
        fail(script, str(err))
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
        fail(script, str(err))

    from megatron.core.enums import ModelType
    from megatron.training import get_tokenizer, pretrain, set_startup_timestamps
    from megatron.training.argument_utils import pretrain_cfg_container_from_args

    from sedd_megatron.datasets.sedd_dataset import (  # lazy: megatron, after the CPU shim
        train_valid_test_datasets_provider,
    )
    from sedd_megatron.training.arguments import (  # lazy: torch after _START
        parse_args,
        transformer_engine_notice,
    )
    from sedd_megatron.training.hooks import (  # lazy: imports megatron
        TRAINED,
        install_training_hooks,
    )

    set_startup_timestamps(program_start=_START, main_entry=time.time())
    try:
        args = parse_args(argv)
        if extra_checks is not None:
            extra_checks(args)
        check_data_paths(args, get_tokenizer().vocab_size)
        check_load_paths(args)
    except (ConfigError, AssertionError, ValueError) as err:
        fail(script, str(err) or repr(err))
    restore_third_party_logging()  # start-up is over: Megatron's warnings matter from here
    notice = transformer_engine_notice(args)
    if notice and int(os.environ.get("RANK", "0")) == 0:
        print(notice, flush=True)
    install_training_hooks()
    model_provider, forward_step = step_functions(args)
    try:
        pretrain(  # by keyword: megatron-core 0.18 and 0.19 order these differently
            pretrain_cfg_container_from_args(args),
            train_valid_test_dataset_provider=train_valid_test_datasets_provider,
            model_type=ModelType.encoder_or_decoder,
            forward_step_func=forward_step,
            model_provider=model_provider,
        )
        summary = summarize(args)
        if after is not None:
            summary.update(after(args, TRAINED["model"]) or {})
    except SEDDError as err:  # bad input found only once Megatron reads it (checkpoint, data)
        fail(script, str(err))
    if torch.distributed.get_rank() == torch.distributed.get_world_size() - 1:
        print(f"{_title(script)} training summary: " + json.dumps(summary), flush=True)
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            with atomic_open(os.path.join(args.save, "sedd_summary.json")) as f:
                json.dump(summary, f, indent=2)
    return summary


def _title(script: str) -> str:
    return "SEDD" if script == "pretrain_sedd.py" else os.path.splitext(script)[0]
