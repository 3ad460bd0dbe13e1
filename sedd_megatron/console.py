"""What the entry points print: quiet third-party imports and one-line errors.

Importing torch, Megatron-Core, Transformer Engine or Apex prints warnings that are no use to a
user (no TE, no Apex, deprecations); argparse prints its whole usage before an error (Megatron's
is 700 lines). The entry points call :func:`quiet_third_party` first, so that an error is the one
line ``<prog>: error: <message>`` on stderr. ``SEDD_SHOW_WARNINGS=1`` in the environment shows
everything again. This module imports only the standard library.

Once start-up is over, :func:`restore_third_party_logging` lets third-party WARNING records
through again, but keeps their INFO/DEBUG records off the console: torch configures its own
loggers when imported (``torch._logging``: level WARNING, its own stderr handler, ``TORCH_LOGS``),
and Megatron sets the root logger to INFO, so a torch logger left at NOTSET would print every
c10d, dynamo and inductor INFO record. Megatron's own INFO records (``INFO:megatron.core...``:
datasets, DDP buckets, timers) are its progress and follow its ``--logging-level``.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import warnings
from typing import NoReturn

#: Environment switch that shows third-party warnings and log chatter again.
SHOW_WARNINGS = "SEDD_SHOW_WARNINGS"
# torch sets the level of its "torch" logger when it is imported: its chatty children by name
_CHATTY_LOGGERS = (
    "megatron",
    "torch",
    "torch.utils.cpp_extension",
    "torch.distributed",
    "transformer_engine",
    "apex",
    "triton",
)


def show_warnings() -> bool:
    return os.environ.get(SHOW_WARNINGS, "").strip().lower() not in ("", "0", "false", "no")


def quiet_third_party() -> None:
    """Hide Python warnings and the WARNING-level log records of third-party packages.

    sedd_megatron itself reports problems as errors, never as warnings; the warnings a run
    raises come from torch, Megatron and friends (some through our torch-function mode, so they
    cannot be told apart by module). Call before importing torch or Megatron; a no-op with
    ``SEDD_SHOW_WARNINGS=1``. Also applies to the processes this one starts (through
    ``PYTHONWARNINGS``).
    """
    if show_warnings():
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def restore_third_party_logging() -> None:
    """Let third-party WARNING log records through again (after start-up, for training).

    A logger still at the ERROR level :func:`quiet_third_party` gave it goes to WARNING
    (``megatron`` to NOTSET: Megatron's root level decides); one configured since (torch's
    loggers, set up by torch's import or ``TORCH_LOGS``) is left as it is.
    """
    if show_warnings():
        return
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.ERROR:
            logger.setLevel(logging.NOTSET if name == "megatron" else logging.WARNING)


#: The exit status of a run stopped by Ctrl-C (SIGINT), as a shell reports one: 128 + 2.
INTERRUPTED = 130


def exit_on_interrupt(prog: str | None = None) -> None:
    """Ctrl-C at any point of an entry point -- while torch imports, while Megatron starts, in
    the middle of the work -- ends it with the one line ``<prog>: interrupted`` on stderr and
    exit status 130, instead of a KeyboardInterrupt traceback.

    Entry points call it first (before any heavy import). It replaces ``sys.excepthook`` for
    KeyboardInterrupt only: code that handles Ctrl-C itself (generate_sedd.py keeps its
    finished samples) still does; ``finally`` blocks and context managers (temporary files)
    have run when the hook is reached, and the hook runs the ``atexit`` handlers before it
    exits. A second Ctrl-C meanwhile exits at once."""
    previous = sys.excepthook
    if getattr(previous, "_sedd_interrupt_hook", False):
        return
    name = prog or os.path.basename(sys.argv[0] or "python")

    def hook(kind, value, traceback):
        if not issubclass(kind, KeyboardInterrupt):
            previous(kind, value, traceback)
            return
        signal.signal(signal.SIGINT, lambda *_: os._exit(INTERRUPTED))
        try:
            print(f"{name}: interrupted", file=sys.stderr, flush=True)
            atexit._run_exitfuncs()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError, AttributeError):
                    pass
            os._exit(INTERRUPTED)

    hook._sedd_interrupt_hook = True
    sys.excepthook = hook


def print_error(prog: str, message: str) -> None:
    """Print ``<prog>: error: <message>`` as one line on stderr."""
    one_line = " ".join(str(message).split()) or "failed"
    print(f"{prog}: error: {one_line}", file=sys.stderr, flush=True)


def fail(prog: str, message: str, status: int = 2) -> NoReturn:
    """:func:`print_error`, then exit with ``status``."""
    print_error(prog, message)
    sys.exit(status)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report a usage error as one line (no usage dump), exit status 2."""

    def error(message: str) -> NoReturn:
        fail(parser.prog, f"{message} (see --help)")

    parser.error = error
    return parser


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (its subparsers too)."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog.split()[0], f"{message} (see --help)")


def note(prog: str, message: str) -> None:
    """Print ``<prog>: note: <message>`` as one line on stderr (once: rank 0 under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{prog}: note: {message}", file=sys.stderr, flush=True)


class DeprecatedSpelling(argparse.Action):
    """A former spelling of an option, kept for one release: it stores into the new option's
    ``dest`` after a one-line note naming the new spelling (``new=``)."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        note(parser.prog.split()[0], f"{option_string} is deprecated, use {self.new}")
        setattr(namespace, self.dest, values)


def add_deprecated(parser, old: str, new: str, dest: str, **kwargs) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the option ``new`` (same ``dest``)."""
    kwargs.setdefault("help", argparse.SUPPRESS)
    parser.add_argument(old, dest=dest, action=DeprecatedSpelling, new=new, **kwargs)


#: How every tool names the model it reads (Megatron's flag for the directory to load).
MODEL_FLAG = "--load"


def add_model_argument(parser, help: str, positional: bool = False, old: tuple = ()) -> None:
    """``--load MODEL``: the one way every tool names the model it reads. ``positional`` keeps a
    former positional MODEL working for one release, ``old`` former flag spellings; both say
    so in one line. Call :func:`resolve_model` on the parsed arguments."""
    parser.add_argument(MODEL_FLAG, metavar="MODEL", help=f"{help} (required)")
    for flag in old:
        add_deprecated(parser, flag, MODEL_FLAG, dest="load", metavar="MODEL")
    if positional:
        parser.add_argument("old_model", nargs="?", help=argparse.SUPPRESS)


def resolve_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill ``args.load`` from a deprecated positional MODEL (with a note); a usage error when
    no model is named, or two are."""
    positional = vars(args).pop("old_model", None)
    if positional is not None:
        if args.load is not None:
            parser.error(f"name the model once, with {MODEL_FLAG} MODEL")
        note(parser.prog.split()[0], f"a positional MODEL is deprecated, use {MODEL_FLAG} MODEL")
        args.load = positional
    if args.load is None:
        parser.error(f"the following arguments are required: {MODEL_FLAG}")
