"""Convert SEDD checkpoints between pretrain_sedd.py (Megatron) and the published layout.

    python tools/convert_checkpoint.py export --load CKPT [--iteration N] [--raw] \
        [--pytorch-bin] --out DIR [--verify]
    python tools/convert_checkpoint.py import --load DIR --out CKPT [--tp T --pp P] [--verify]
    python tools/convert_checkpoint.py verify --load DIR [--iteration N]

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
Both read the source's checksum manifest (sedd_checksums.json) first and give the result its
own; --no-verify-checksums skips the check.
verify checks a checkpoint's files against their manifest on its own: a plain directory, or
every iteration of a pretrain_sedd.py checkpoint (--iteration N: that one). Exit 0 and one line
when all match; exit 2 naming the first differing file; exit 1 (one line on stdout) when a
directory has no manifest (saved before checksums existed, or by another tool).
Errors print one line and exit with status 2; the output directory is then left absent.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from sedd_megatron.console import (
    ArgumentParser,
    add_model_argument,
    exit_on_interrupt,
    quiet_third_party,
    resolve_model,
)

exit_on_interrupt()  # Ctrl-C from here on: one line, exit status 130
quiet_third_party()  # before torch/Megatron are imported; SEDD_SHOW_WARNINGS=1 shows all

from sedd_megatron import runtime
from sedd_megatron.checkpoint import (
    export_checkpoint,
    find_iteration,
    import_checkpoint,
    is_plain_dir,
    read_plain_checkpoint,
    source_kind,
    verify_checksums,
)
from sedd_megatron.checkpoint.layouts import (
    SPLIT_RULE,
    check_config_layout,
    read_plain_config,
)
from sedd_megatron.checkpoint.rank0_writes import new_output_dir
from sedd_megatron.checksums import MANIFEST_NAME, read_manifest, verify_directory
from sedd_megatron.errors import CheckpointError, ConfigError

ITERATION = re.compile(r"^(iter_\d{7}|release)$")


NO_VERIFY_HELP = "skip checking the source's files against their checksum manifest"


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
    export.add_argument("--no-verify-checksums", action="store_true", help=NO_VERIFY_HELP)
    imp = commands.add_parser(
        "import",
        help="published layout -> pretrain_sedd.py checkpoint",
        description=f"Pipeline split: {SPLIT_RULE}.",
    )
    add_model_argument(imp, "config.json + model.safetensors directory", old=("--plain",))
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
    imp.add_argument("--no-verify-checksums", action="store_true", help=NO_VERIFY_HELP)
    check = commands.add_parser(
        "verify", help="check a checkpoint's files against their checksum manifest"
    )
    add_model_argument(check, "pretrain_sedd.py checkpoint or plain directory", positional=True)
    check.add_argument("--iteration", type=int, help="only this iteration (default: all)")
    args = parser.parse_args(argv)
    if args.command != "export":
        resolve_model({"import": imp, "verify": check}[args.command], args)
    if args.command == "import" and (args.tp < 1 or args.pp < 1):
        parser.error("--tp and --pp must be positive")
    return args


def run_export(args) -> str:
    new_output_dir(args.out, source=args.load)  # before the world starts
    if not args.no_verify_checksums:
        verify_checksums(args.load, args.iteration)
    with runtime.world():  # any world size: TP = PP = 1, the rest data parallel
        result = export_checkpoint(
            args.load,
            args.out,
            iteration=args.iteration,
            use_ema=False if args.raw else None,
            pytorch_bin=args.pytorch_bin,
            verify_outputs=args.verify,
            verify_checksums=not args.no_verify_checksums,
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
        config, _ = read_plain_checkpoint(  # the weights too, not from every rank
            args.load, verify_checksums=not args.no_verify_checksums
        )
    else:
        config = read_plain_config(args.load)  # import_checkpoint reads the weights
    world_size = None if spawn else int(os.environ.get("WORLD_SIZE", "1"))
    check_config_layout(config, args.tp, args.pp, world_size=world_size)
    new_output_dir(args.out, source=args.load)
    if spawn:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "sedd_megatron.cli.convert", *argv]  # fmt: skip
        _relaunch(cmd)
        return None  # rank 0 of the launched job printed the report
    with runtime.world(args.tp, args.pp):
        result = import_checkpoint(
            args.load,
            args.out,
            tp=args.tp,
            pp=args.pp,
            verify_outputs=args.verify,
            verify_checksums=not args.no_verify_checksums,
        )
    return _report(
        f"imported {args.load} as a TP={result.tp} PP={result.pp} release checkpoint "
        f"{result.path} (pretrain_sedd.py --load {result.path})",
        result.max_relative_difference,
    )


def run_verify(args) -> tuple[str, int]:
    """(line, exit status) of ``verify``: 0 when every manifest matches, 1 when a directory
    has none; a differing file raises CheckpointError."""
    source_kind(args.load)  # a clear error for a directory that is no checkpoint
    if is_plain_dir(args.load):
        folders = [Path(args.load)]
    elif args.iteration is not None or (Path(args.load) / "metadata.json").is_file():
        folders = [find_iteration(args.load, args.iteration).path]
    else:
        root = Path(args.load)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and ITERATION.match(p.name))
        folders = folders or [find_iteration(root).path]  # its clear error
    files, without = 0, []
    for folder in folders:
        if verify_directory(folder, note=False):
            files += len(read_manifest(folder)[1])
        else:
            without.append(str(folder))
    if without:
        return (
            f"{', '.join(without)}: no {MANIFEST_NAME} (saved before checksums or by another "
            f"tool): nothing to verify" + (f"; the other files ({files}) match" if files else ""),
            1,
        )
    where = str(folders[0]) if len(folders) == 1 else f"{len(folders)} iterations of {args.load}"
    return f"ok: {files} files of {where} match their checksums", 0


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
    if done.returncode == 0:  # without the notes this process printed already
        notes = "convert_checkpoint.py: note: "
        kept = [line for line in done.stderr.splitlines(True) if not line.startswith(notes)]
        sys.stderr.write("".join(kept))
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
    status = 0
    try:
        if args.command == "verify":
            report, status = run_verify(args)
        elif args.command == "export":
            report = run_export(args)
        else:
            report = run_import(args, argv)
    except (CheckpointError, ConfigError, FileExistsError, ValueError) as err:
        if rank0:
            print(f"convert_checkpoint.py: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if report and rank0:
        print(report, flush=True)
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
