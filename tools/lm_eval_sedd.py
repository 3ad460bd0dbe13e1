#!/usr/bin/env python
"""lm-evaluation-harness on SEDD models: lm_eval's command line with the model ``sedd``.

Every flag is lm_eval's (0.4.x); this registers the model ``sedd``
(sedd_megatron/lm_harness.py), starts the Megatron world when the model args ask for one, and
hands over to lm_eval's command line. Model args: pretrained=DIR (plain directory or
pretrain_sedd.py checkpoint), backend, tp, pp, iteration, num_t_samples, design, replicates,
tail_samples, t_eps, seed, dtype, steps, predictor, tokenizer, append_eos, level;
--batch_size is the number of sequences per model call.

Examples:
  python tools/lm_eval_sedd.py --model sedd --model_args pretrained=runs/export \\
      --tasks lambada_openai --batch_size 32 --output_path results
  torchrun --nproc-per-node 4 tools/lm_eval_sedd.py --model sedd \\
      --model_args pretrained=runs/quickstart/checkpoint,tp=2,pp=2 --tasks wikitext
"""

import contextlib
import sys

from sedd_megatron.console import quiet_third_party

quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron.errors import CheckpointError, ConfigError, DataError, EvalError  # noqa: E402

PROG = "lm_eval_sedd.py"


def model_args(argv: list[str]) -> dict:
    """The key=value pairs of --model_args, typed as lm_eval types them."""
    from lm_eval.utils import simple_parse_args_string

    for i, arg in enumerate(argv):
        if arg == "--model_args" and i + 1 < len(argv):
            text = argv[i + 1]
        elif arg.startswith("--model_args="):
            text = arg.split("=", 1)[1]
        else:
            continue
        pairs = [p for p in text.split(",") if p.strip()]
        bad = [p for p in pairs if "=" not in p]
        if bad:
            raise EvalError(f"--model_args: expected key=value, got {bad[0]!r}")
        return simple_parse_args_string(text)
    return {}


def check_model(argv: list[str]) -> None:
    for i, arg in enumerate(argv):
        name = argv[i + 1] if arg == "--model" and i + 1 < len(argv) else None
        if arg.startswith("--model="):
            name = arg.split("=", 1)[1]
        if name is not None and name != "sedd":
            raise EvalError(f"--model must be sedd, got {name!r} (use lm_eval for other models)")


def _main(argv: list[str]) -> int:
    check_model(argv)
    from sedd_megatron.lm_harness import check_model_args, register  # lazy: torch, lm_eval

    settings = check_model_args(**model_args(argv))  # bad model args fail before any task loads
    from sedd_megatron.checkpoint.opener import resolve_backend  # lazy: torch, after the checks

    world = None
    if resolve_backend(settings["pretrained"], settings["backend"]) == "megatron":
        from sedd_megatron import runtime  # lazy: Megatron, only for its backend

        world = runtime.world(settings["tp"], settings["pp"], seed=settings["seed"])
    from lm_eval.__main__ import cli_evaluate

    register()
    with world or contextlib.nullcontext():
        saved = sys.argv
        sys.argv = ["lm_eval", *argv]
        try:
            cli_evaluate()
        finally:
            sys.argv = saved
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except (EvalError, DataError, CheckpointError, ConfigError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
