"""Convert SEDD checkpoints between pretrain_sedd.py (Megatron) and the published layout.

    python tools/convert_checkpoint.py export --load CKPT [--iteration N] [--raw] \
        [--pytorch-bin] --out DIR [--verify]
    python tools/convert_checkpoint.py import --plain DIR --out CKPT [--tp T --pp P] [--verify]

export writes config.json + model.safetensors (EMA weights unless --raw) from the latest (or the
given) iteration, gathering any TP/PP split. import writes a Megatron release checkpoint split
for TP x PP; it first checks the input, the layout (heads and hidden size divisible by T, at least
one block per pipeline stage, real vocabulary rows on every TP rank) and the output path, then,
with T*P > 1, re-launches itself under ``torchrun --standalone --nproc_per_node=T*P`` (already
under torchrun, it runs as is). When P does not divide the blocks, the pipeline split is uneven
(Megatron's --decoder-first/last-pipeline-num-layers, recorded in the checkpoint's args): the
middle stages get equal shares and the first and last stages the rest, as evenly as Megatron
allows (ties: fewer blocks on the end stages, the extra one first), e.g. 3 blocks at P=2 -> 2+1.
--verify compares log-scores of source and result on random inputs (fails above 1e-5).
--out must be a new path (not inside the source; missing parents are created at the end).
Errors print one line and exit with status 2; the output directory is then left absent.
"""

import argparse
import os
import subprocess
import sys

from sedd_megatron.console import ArgumentParser, quiet_third_party

quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron import runtime
from sedd_megatron.checkpoint import (
    export_checkpoint,
    import_checkpoint,
    read_plain_checkpoint,
)
from sedd_megatron.checkpoint.parallel import (
    SPLIT_RULE,
    check_config_layout,
    read_plain_config,
)
from sedd_megatron.checkpoint.world import new_output_dir
from sedd_megatron.errors import CheckpointError, ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(prog="convert_checkpoint.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="pretrain_sedd.py checkpoint -> published layout")
    export.add_argument("--load", required=True, help="pretrain_sedd.py --save directory")
    export.add_argument("--iteration", type=int, help="iteration to export (default: latest)")
    export.add_argument("--raw", action="store_true", help="raw weights instead of the EMA ones")
    export.add_argument("--pytorch-bin", action="store_true", help="also write pytorch_model.bin")
    export.add_argument("--out", required=True, help="new output directory")
    export.add_argument("--verify", action="store_true", help="compare log-scores after writing")
    imp = commands.add_parser(
        "import",
        help="published layout -> pretrain_sedd.py checkpoint",
        description=f"Pipeline split: {SPLIT_RULE}.",
    )
    imp.add_argument("--plain", required=True, help="config.json + model.safetensors directory")
    imp.add_argument("--out", required=True, help="new checkpoint directory (for --load)")
    imp.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the result")
    imp.add_argument(
        "--pp",
        type=int,
        default=1,
        help="pipeline-parallel size of the result (uneven split when it does not divide the "
        "blocks: 3 blocks at --pp 2 -> 2+1; see import --help)",
    )
    imp.add_argument("--verify", action="store_true", help="compare log-scores after writing")
    args = parser.parse_args(argv)
    if args.command == "import" and (args.tp < 1 or args.pp < 1):
        parser.error("--tp and --pp must be positive")
    return args


def run_export(args) -> str:
    new_output_dir(args.out, source=args.load)  # before the world starts
    with runtime.world():  # any world size: TP = PP = 1, the rest data parallel
        result = export_checkpoint(
            args.load,
            args.out,
            iteration=args.iteration,
            use_ema=False if args.raw else None,
            pytorch_bin=args.pytorch_bin,
            verify_outputs=args.verify,
        )
    info = result.info
    weights = "EMA" if info.ema else "raw"
    return _report(
        f"exported iteration {info.iteration} ({weights} weights) of {args.load} to {result.path}",
        result.max_relative_difference,
    )


def run_import(args, argv) -> str | None:
    nproc = args.tp * args.pp
    spawn = nproc > 1 and "RANK" not in os.environ
    # Bad input is reported here, once, before any process or world starts.
    if spawn:
        config, _ = read_plain_checkpoint(args.plain)  # the weights too, not from every rank
    else:
        config = read_plain_config(args.plain)  # import_checkpoint reads the weights
    world_size = None if spawn else int(os.environ.get("WORLD_SIZE", "1"))
    check_config_layout(config, args.tp, args.pp, world_size=world_size)
    new_output_dir(args.out, source=args.plain)
    if spawn:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "sedd_megatron.cli.convert", *argv]  # fmt: skip
        _relaunch(cmd)
        return None  # rank 0 of the launched job printed the report
    with runtime.world(args.tp, args.pp):
        result = import_checkpoint(
            args.plain, args.out, tp=args.tp, pp=args.pp, verify_outputs=args.verify
        )
    return _report(
        f"imported {args.plain} as a TP={result.tp} PP={result.pp} release checkpoint "
        f"{result.path} (pretrain_sedd.py --load {result.path})",
        result.max_relative_difference,
    )


def _relaunch(cmd: list[str]) -> None:
    """Run ``cmd`` (torchrun); on failure print the ranks' one error line, not torchrun's
    traceback, and exit with status 2 (torchrun's own status when no rank reported one)."""
    # the ranks import this package from where this process did (a checkout or site-packages)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, errors="replace", env=env)
    prefix = "convert_checkpoint.py: error: "
    errors = [line for line in done.stderr.splitlines() if line.startswith(prefix)]
    if done.returncode == 0:
        sys.stderr.write(done.stderr)
        return
    if errors:
        print(errors[0], file=sys.stderr, flush=True)
        raise SystemExit(2)
    sys.stderr.write(done.stderr)
    raise SystemExit(done.returncode)


def _report(line: str, difference: float | None) -> str:
    if difference is not None:
        line += f"\nverify: max relative difference of the log-scores {difference:.3g} (ok)"
    return line


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        report = run_export(args) if args.command == "export" else run_import(args, argv)
    except (CheckpointError, ConfigError, FileExistsError, ValueError) as err:
        if rank0:
            print(f"convert_checkpoint.py: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if report and rank0:
        print(report, flush=True)


if __name__ == "__main__":
    main()
