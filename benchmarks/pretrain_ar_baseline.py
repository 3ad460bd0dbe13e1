"""Train the autoregressive baseline (Megatron GPTModel) on SEDD's stack, then score the ELBO
harness's blocks exactly.

    python benchmarks/pretrain_ar_baseline.py --config configs/sedd_tiny_cpu.yaml \
        --train-data-path corpus/train --valid-data-path corpus/valid --save ar_ckpt \
        --ar-eval-data ptb-test --ar-eval-output ar_ptb_test.json

Every pretrain_sedd.py flag applies (the SEDD group is accepted and ignored), so a SEDD config
trains an AR model of the same width, depth, heads, vocabulary and length on the same data with
the same optimizer, schedule, EMA and seeds (sedd_megatron.training.autoregressive). With
``--ar-eval-data`` the trained model (EMA weights unless --no-eval-with-ema) scores the blocks
that tools/eval_elbo_sedd.py evaluates for the same data and length: exact perplexity, written
to ``--ar-eval-output`` (JSON) and to the training summary (``<save>/sedd_summary.json``).
"""

import contextlib
import json
import sys
import time

from sedd_megatron.console import ArgumentParser, exit_on_interrupt, fail, quiet_third_party

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron.atomic import atomic_open
from sedd_megatron.datasets.checks import check_int, check_output_file
from sedd_megatron.errors import ConfigError, EvalError
from sedd_megatron.evaluation.settings import check_eval_data
from sedd_megatron.training.pretrain import run_training

SCRIPT = "pretrain_ar_baseline.py"


def parse_eval_args(argv):
    parser = ArgumentParser(
        prog=SCRIPT, add_help=False, description="evaluation of the AR baseline after training"
    )
    parser.add_argument("--ar-eval-data", default=None,
                        help="ptb-test / ptb-valid / a text, JSONL or indexed dataset")  # fmt: skip
    parser.add_argument("--ar-eval-max-blocks", type=int, default=None)
    parser.add_argument("--ar-eval-batch-size", type=int, default=8)
    parser.add_argument("--ar-eval-output", default=None, help="JSON of the exact likelihood")
    return parser.parse_known_args(argv)


def check_eval_args(ev) -> None:
    if ev.ar_eval_data is None:
        if ev.ar_eval_output is not None:
            raise ConfigError("--ar-eval-output needs --ar-eval-data")
        return
    try:
        check_eval_data(ev.ar_eval_data)
    except EvalError as err:
        raise ConfigError(f"--ar-eval-data: {err}") from None
    check_int(ev.ar_eval_batch_size, "--ar-eval-batch-size", minimum=1, error=ConfigError)
    if ev.ar_eval_max_blocks is not None:
        check_int(ev.ar_eval_max_blocks, "--ar-eval-max-blocks", minimum=1, error=ConfigError)
    if ev.ar_eval_output is not None:
        check_output_file(ev.ar_eval_output, "--ar-eval-output", error=ConfigError)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        ev, rest = parse_eval_args(argv)
        check_eval_args(ev)
    except (ConfigError, EvalError) as err:
        fail(SCRIPT, str(err))

    def extra_checks(args):
        from sedd_megatron.training.autoregressive import check_ar_args  # lazy: megatron

        check_ar_args(args)
        if ev.ar_eval_data is not None and args.pipeline_model_parallel_size > 1:
            raise ConfigError("--ar-eval-data needs --pipeline-model-parallel-size 1")

    def step_functions(args):
        from megatron.training import get_tokenizer

        from sedd_megatron.training.autoregressive import (  # lazy: megatron, after the CPU shim
            ar_model_provider,
            make_ar_forward_step,
        )

        return ar_model_provider, make_ar_forward_step(args, get_tokenizer().eod)

    def after(args, model_chunks):
        if ev.ar_eval_data is None:
            return {}
        return {"ar_eval": evaluate_trained(args, model_chunks, ev)}

    run_training(SCRIPT, rest, step_functions, after=after, extra_checks=extra_checks)


def evaluate_trained(args, model_chunks, ev) -> dict:
    """Exact likelihood of the ELBO harness's blocks under the trained model (EMA weights),
    data parallel over blocks; every rank returns the summary."""
    import numpy as np
    import torch
    from megatron.core import parallel_state as ps
    from megatron.training import get_tokenizer

    from sedd_megatron.evaluation.autoregressive import (  # lazy: torch, after start-up
        ar_summary,
        block_nlls,
    )
    from sedd_megatron.evaluation.data import load_eval_data  # lazy: torch, after start-up
    from sedd_megatron.models.sedd.ema import find_ema  # lazy: torch, after start-up
    from sedd_megatron.training.autoregressive import full_vocab_logits  # lazy: megatron

    tokenizer = get_tokenizer()
    data = load_eval_data(
        ev.ar_eval_data, args.seq_length, max_blocks=ev.ar_eval_max_blocks,
        vocab_size=tokenizer.vocab_size,
    )  # fmt: skip
    (model,) = model_chunks
    ema = find_ema(model) if args.eval_with_ema else None
    device = next(model.parameters()).device
    dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    mine = data.blocks[dp_rank::dp_size]
    model.eval()
    start = time.perf_counter()
    with ema.swapped_in() if ema is not None else contextlib.nullcontext():
        logits_fn = full_vocab_logits(model, tokenizer.eod, tokenizer.vocab_size)
        mine_nlls = block_nlls(
            logits_fn, mine, batch_size=ev.ar_eval_batch_size, device=device,
            progress=torch.distributed.get_rank() == 0,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    parts = [None] * dp_size
    group = ps.get_data_parallel_group()
    torch.distributed.all_gather_object(parts, mine_nlls.tolist(), group=group)
    nlls = [None] * data.num_blocks
    for rank, part in enumerate(parts):
        nlls[rank::dp_size] = part
    summary = {
        **ar_summary(np.asarray(nlls), data.seq_length),
        "data": data.summary(),
        "eval_with_ema": ema is not None,
        "seconds": seconds,
    }
    if ev.ar_eval_output is not None and torch.distributed.get_rank() == 0:
        with atomic_open(ev.ar_eval_output) as f:
            json.dump({**summary, "block_nlls": nlls}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
