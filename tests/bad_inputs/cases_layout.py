"""Bad-input cases of the area "layout": --tp/--pp that do not fit the model (refused before any
process is spawned or the Megatron world starts) and convert_checkpoint.py output paths that
cannot be a new directory (refused before any work).

``WORLD_SIZE`` in a case's environment makes generate/eval take the Megatron path as they would
under torchrun, without starting one: the layout check comes first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.bad_inputs import Case

CONVERT = "tools/convert_checkpoint.py"
GENERATE = ("tools/generate_sedd.py", "--no-detokenize", "--no-progress", "--steps", "2")
EVAL = ("tools/eval_elbo_sedd.py", "--data", "{text}", "--no-progress", "--num-t-samples", "2")
IMPORT = (CONVERT, "import", "--load", "{plain}")
EXPORT = (CONVERT, "export", "--load", "{megatron}")


def _directory(tmp: Path, fixtures: dict[str, Path]) -> None:
    (tmp / "out").mkdir()


def _file(tmp: Path, fixtures: dict[str, Path]) -> None:
    (tmp / "out").write_text("not a directory\n")


def _plain_copy(tmp: Path, fixtures: dict[str, Path]) -> None:
    shutil.copytree(fixtures["plain"], tmp / "plain")


CASES = [
    # --tp/--pp that do not fit tiny_absorb (4 heads, hidden 64, 2 blocks)
    Case(
        "import --tp 3 (4 heads)",
        (*IMPORT, "--out", "{tmp}/out", "--tp", "3"),
        r"layout TP=3 x PP=1 does not fit the model: n_heads 4 is not divisible by TP=3",
    ),
    Case(
        "import --pp 3 (2 blocks)",
        (*IMPORT, "--out", "{tmp}/out", "--pp", "3"),
        r"2 blocks cannot fill PP=3 pipeline stages",
    ),
    Case(
        "import --tp 0",
        (*IMPORT, "--out", "{tmp}/out", "--tp", "0"),
        r"--tp and --pp must be positive",
    ),
    Case(
        "generate --tp 3 on a Megatron checkpoint (4 heads)",
        (*GENERATE, "--load", "{megatron}", "--tp", "3"),
        r"layout TP=3 x PP=1 does not fit the model: n_heads 4 is not divisible by TP=3",
        env={"WORLD_SIZE": "3"},
    ),
    Case(
        "generate --pp 4 (2 blocks)",
        (*GENERATE, "--load", "{plain}", "--backend", "megatron", "--pp", "4"),
        r"2 blocks cannot fill PP=4 pipeline stages",
        env={"WORLD_SIZE": "4"},
    ),
    Case(
        "generate --tp 2 with the plain backend",
        (*GENERATE, "--load", "{plain}", "--tp", "2"),
        r"TP=2 x PP=1 needs the Megatron backend under torchrun",
    ),
    Case(
        "eval --tp 3 (4 heads)",
        (*EVAL, "--load", "{plain}", "--tp", "3"),
        r"n_heads 4 is not divisible by TP=3",
        env={"WORLD_SIZE": "3"},
    ),
    # output paths
    Case(
        "import --out an existing directory",
        (*IMPORT, "--out", "{tmp}/out"),
        r"output .*/out already exists \(a directory\)",
        setup=_directory,
    ),
    Case(
        "import --out inside the source directory",
        (CONVERT, "import", "--load", "{tmp}/plain", "--out", "{tmp}/plain/converted"),
        r"lies inside the source",
        setup=_plain_copy,
    ),
    Case(
        "import --out below a file",
        (*IMPORT, "--out", "{tmp}/out/converted", "--tp", "2"),
        r"cannot create output .*: .*/out is not a directory",
        setup=_file,
    ),
    Case(
        "export --out an existing file",
        (*EXPORT, "--out", "{tmp}/out"),
        r"output .*/out already exists \(a file\)",
        setup=_file,
    ),
    Case(
        "export --out where nothing can be written",
        (*EXPORT, "--out", "/proc/sedd_export"),
        r"cannot create output /proc/sedd_export: cannot write in /proc",
    ),
    Case(
        "export --out inside the checkpoint",
        (*EXPORT, "--out", "{megatron}/exported"),
        r"lies inside the source",
    ),
]
