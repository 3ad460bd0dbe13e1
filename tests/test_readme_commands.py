"""The README's shell blocks and the examples' commands, run as written at tiny size.

Every command of every ```bash / ```sh / ```console block of README.md, every command line in the
header comments of examples/*.sh and *.sbatch, and (through those) every command the example
scripts run, is executed with the substitutions of :data:`SUBSTITUTIONS` only: sizes, paths and
iteration counts, one table for all. What a CPU cannot run is checked as far as it goes:

- ``torchrun ... pretrain_sedd.py ...`` (8 GPUs, a cluster): the arguments go through the same
  steps as pretrain_sedd.py up to the start of training -- the command-line checks, the data
  prefixes' ``.bin``/``.idx`` (so the preprocessing step's output name must be the one training
  reads), Megatron's parser and its validation at the command's world size;
- the example scripts run under bash with ``torchrun``, ``srun`` and ``scontrol`` replaced by
  stubs that record the ``torchrun`` command line, which is then checked as above;
- ``make TARGET``: ``make -n TARGET`` (the target exists); ``pip ...``: not run (it changes the
  environment; .ci/install_check.sh runs the install).

The training step of the README's cluster recipe is parse-only, so the checkpoint directory the
later steps read is made by ``convert_checkpoint.py import`` of a tiny GPT-2-vocabulary model (the
fixture below); that the later steps read the directory training saves to is checked on the
command lines.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The one substitution table: every difference between a command as written and as run here.
#: Keys are literal text of the commands; "$NAME" keys set an environment variable (the size
#: knobs of the example scripts). "{tmp}" is the test's scratch directory.
SUBSTITUTIONS: dict[str, str] = {
    # paths
    "corpus.jsonl": "{tmp}/corpus.jsonl",
    "owt.jsonl": "{tmp}/corpus.jsonl",
    "/data/": "{tmp}/data/",
    "/ckpt/sedd_medium": "{tmp}/ckpt_medium",
    "/checkpoints/sedd_small": "{tmp}/ckpt_small",
    "ckpt/": "{tmp}/ckpt/",
    "runs/quickstart/checkpoint": "{tmp}/ckpt/",
    "CKPT": "{tmp}/ckpt/",
    "[OUT_DIR]": "{tmp}/gen_ppl",
    "sedd-export/": "{tmp}/sedd-export/",
    "samples.jsonl": "{tmp}/samples.jsonl",
    "elbo.json": "{tmp}/elbo.json",
    # sizes and iteration counts
    "--workers 32": "--workers 1",
    "--num-samples 4": "--num-samples 1",
    "--steps 128": "--steps 2",
    "--data ptb-test": "--data ptb-test --blocks 1 --num-t-samples 2 --batch-size 1",
    "$STEPS": "2",
    "$NUM_SAMPLES": "1",
    "$BATCH_SIZE": "1",
}

_TEXT_SUBS = {k: v for k, v in SUBSTITUTIONS.items() if not k.startswith("$")}
_ENV_SUBS = {k[1:]: v for k, v in SUBSTITUTIONS.items() if k.startswith("$")}
_SUB_RE = re.compile("|".join(map(re.escape, sorted(_TEXT_SUBS, key=len, reverse=True))))
_FENCE = re.compile(r"^```(bash|sh|console)\s*$")
_HEADER_CMD = re.compile(
    r"^#\s+(?:Usage:\s*)?"  # a comment line: optional "Usage:", then
    r"((?:[A-Z_]+=(?:\"[^\"]*\"|\S+)\s+)*"  # environment assignments and
    r"(?:python|bash|sbatch|torchrun|examples/)\S*.*)$"  # a program
)
_TIMEOUT = 300


@dataclass
class Command:
    source: str  # "README.md:48"
    text: str  # as written, continuation lines joined
    group: str  # commands of one block or one example share a group


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for lineno, line in lines:
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            pending = (lineno, line.strip())
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
            continue
        out.append(pending)
        pending = None
    if pending is not None:
        out.append(pending)
    return out


def readme_commands() -> list[Command]:
    """The commands of README.md's shell blocks (comments and blank lines dropped)."""
    commands, block, group = [], None, 0
    for lineno, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        if block is None:
            if _FENCE.match(line):
                block, group = [], group + 1
            continue
        if line.startswith("```"):
            for start, text in _join_continuations(block):
                text = text.removeprefix("$ ")
                text = text.split(" #", 1)[0].strip() if not text.startswith("#") else ""
                if text:
                    commands.append(Command(f"README.md:{start}", text, f"README block {group}"))
            block = None
            continue
        block.append((lineno, line))
    return commands


def example_commands() -> list[Command]:
    """The command lines in the header comments of examples/*.sh and *.sbatch (usage lines
    included); running them runs the scripts, and so every command the scripts hold."""
    commands = []
    for path in sorted([*REPO.glob("examples/*.sh"), *REPO.glob("examples/*.sbatch")]):
        lines, header = path.read_text().splitlines(), []
        for lineno, line in enumerate(lines, 1):
            if not line.startswith("#"):
                break
            header.append((lineno, line))
        cont: list[tuple[int, str]] = []
        for lineno, line in header:
            if cont:  # a continuation of the previous command line
                cont.append((lineno, line.lstrip("#")))
            elif match := _HEADER_CMD.match(line):
                cont = [(lineno, match.group(1))]
            if cont and not cont[-1][1].rstrip().endswith("\\"):
                for start, text in _join_continuations(cont):
                    rel = path.relative_to(REPO)
                    commands.append(Command(f"{rel}:{start}", text, str(rel)))
                cont = []
    return commands


ALL_COMMANDS = readme_commands() + example_commands()


def substitute(text: str, tmp: Path) -> str:
    return _SUB_RE.sub(lambda m: _TEXT_SUBS[m.group(0)], text).replace("{tmp}", str(tmp))


# ------------------------------------------------------------------------------ the stubs
_TORCHRUN_STUB = """#!{python}
import json, os, sys
with open(os.environ["SEDD_TORCHRUN_RECORD"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
        "env": {{k: os.environ.get(k) for k in ("CUDA_DEVICE_MAX_CONNECTIONS",)}}}}) + "\\n")
"""
_SRUN_STUB = '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n'
_SCONTROL_STUB = "#!/usr/bin/env bash\necho node001\n"
# The examples' PYTHON: the real interpreter, except that the SmolLM2 scorer (the eval extra,
# which may be missing) is checked as far as --help and its --samples files existing.
_PYTHON_STUB = """#!{python}
import importlib.util, os, sys
if sys.argv[1].endswith("eval_gen_ppl.py") and importlib.util.find_spec("llm") is None:
    args = sys.argv[2:]
    samples = args[args.index("--samples") + 1 :]
    samples = samples[: next((i for i, a in enumerate(samples) if a.startswith("--")), None)]
    missing = [s for s in samples if not os.path.isfile(s)]
    if missing:
        sys.exit(f"eval_gen_ppl.py stub: samples not written: {{missing}}")
    os.execv(sys.executable, [sys.executable, sys.argv[1], "--help"])
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _write_stubs(folder: Path) -> None:
    folder.mkdir()
    for name, text in (("torchrun", _TORCHRUN_STUB), ("srun", _SRUN_STUB),
                       ("scontrol", _SCONTROL_STUB), ("python", _PYTHON_STUB)):  # fmt: skip
        (folder / name).write_text(text.format(python=sys.executable))
        (folder / name).chmod(0o755)


# ------------------------------------------------------------------- running one command
def torchrun_world(argv: list[str]) -> tuple[int, str, list[str]]:
    """(world size, script, script args) of a torchrun command line."""
    nproc = nnodes = 1
    i = 0
    while i < len(argv) and not argv[i].endswith(".py"):
        flag, _, value = argv[i].partition("=")
        if not value and flag not in ("--standalone",):
            value, i = argv[i + 1], i + 1
        if flag in ("--nproc_per_node", "--nproc-per-node"):
            nproc = int(value)
        elif flag == "--nnodes":
            nnodes = int(value)
        i += 1
    return nproc * nnodes, argv[i], argv[i + 1 :]


@dataclass
class Runner:
    tmp: Path
    stubs: Path
    record: Path
    results: dict[str, str] = field(default_factory=dict)  # source -> "" (ok) or a problem
    parse_jobs: list[tuple[str, dict]] = field(default_factory=list)  # (source, job)
    saves: dict[str, set[str]] = field(default_factory=dict)  # group -> pretrain --save dirs

    def env(self, assignments: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ, **assignments)
        env.update({k: v for k, v in _ENV_SUBS.items()})
        env["PATH"] = f"{self.stubs}{os.pathsep}{env['PATH']}"
        env["PYTHON"] = str(self.stubs / "python")
        env["SEDD_TORCHRUN_RECORD"] = str(self.record)
        env.update(SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_NODELIST="node001", SLURM_NNODES="4",
                   SLURM_JOB_ID="1", SLURM_NODEID="0")  # fmt: skip
        return env

    def run(self, cmd: Command) -> None:
        words = shlex.split(substitute(cmd.text, self.tmp))
        assignments = {}
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            assignments[key] = value
        program = words[0]
        if program == "pip":
            self.results[cmd.source] = "skip: pip changes the environment"
        elif program == "make":
            self._check(cmd, ["make", "-n", *words[1:]], {})
        elif program == "python":
            self._model_path_agrees(cmd, words)
            self._check(cmd, [sys.executable, *words[1:]], assignments)
        elif program == "torchrun":
            world, script, args = torchrun_world(words[1:])
            assert script == "pretrain_sedd.py", f"{cmd.source}: no CPU check for {script}"
            self._queue_pretrain(cmd, args, world, {})
        elif program == "sbatch":
            script = next(w for w in words[1:] if not w.startswith("-"))
            rest = words[words.index(script) + 1 :]
            self._run_script(cmd, ["bash", str(REPO / script), *rest], assignments)
        elif program == "bash" or program.endswith(".sh"):
            script, *rest = words[1:] if program == "bash" else words
            self._run_script(cmd, ["bash", str(REPO / script), *rest], assignments)
        else:
            raise AssertionError(f"{cmd.source}: no rule for {program!r}")

    def _check(self, cmd: Command, argv: list[str], assignments: dict[str, str], cwd=REPO) -> None:
        done = subprocess.run(argv, cwd=cwd, env=self.env(assignments), capture_output=True,
                              text=True, timeout=_TIMEOUT)  # fmt: skip
        self.results[cmd.source] = (
            "" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-2000:]}"
        )

    def _run_script(self, cmd: Command, argv: list[str], assignments: dict[str, str]) -> None:
        self.record.write_text("")
        self._check(cmd, argv, assignments, cwd=self.tmp)  # the scripts' default outputs: tmp
        if self.results[cmd.source]:
            return
        for line in self.record.read_text().splitlines():
            entry = json.loads(line)
            world, script, args = torchrun_world(entry["argv"])
            env = {k: v for k, v in entry["env"].items() if v is not None}
            self._queue_pretrain(cmd, args, world, env, cwd=entry["cwd"])
            assert script == "pretrain_sedd.py", f"{cmd.source}: torchrun runs {script}"

    def _queue_pretrain(self, cmd, args, world, env, cwd=str(REPO)) -> None:
        if "--save" in args:
            self.saves.setdefault(cmd.group, set()).add(args[args.index("--save") + 1])
        self.parse_jobs.append((cmd.source, dict(argv=args, world=world, env=env, cwd=cwd)))
        self.results.setdefault(cmd.source, "")

    def _model_path_agrees(self, cmd: Command, words: list[str]) -> None:
        """A tool that reads a checkpoint in the block where pretrain_sedd.py saves one reads
        that one."""
        saves = self.saves.get(cmd.group)
        if not saves or words[1] not in (
            "tools/generate_sedd.py", "tools/eval_elbo_sedd.py", "tools/convert_checkpoint.py"
        ):  # fmt: skip
            return
        model = words[words.index("--load") + 1] if "--load" in words else words[2]
        assert model in saves, f"{cmd.source}: reads {model}, but training saves to {saves}"

    def run_parse_jobs(self) -> None:
        """Every queued pretrain command line through pretrain_sedd.py's parsing, in one process."""
        if not self.parse_jobs:
            return
        jobs = self.tmp / "parse_jobs.json"
        jobs.write_text(json.dumps([job for _, job in self.parse_jobs]))
        done = subprocess.run([sys.executable, "-c", _PARSE_WORKER, str(jobs)], cwd=REPO,
                              capture_output=True, text=True, timeout=_TIMEOUT)  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.startswith("JOB ")]
        for i, (source, _) in enumerate(self.parse_jobs):
            if i >= len(lines):
                self.results[source] = f"parse worker died: {done.stderr[-2000:]}"
            elif lines[i] != f"JOB {i} ok":
                self.results[source] = lines[i]


#: pretrain_sedd.py's parsing without training: its command-line checks, the data prefixes,
#: Megatron's parser with the SEDD group, and Megatron's validation at the job's world size.
_PARSE_WORKER = """
import io, json, os, sys, contextlib
from sedd_megatron.runtime import enable_cpu_megatron
from sedd_megatron.training import arguments as sa
from sedd_megatron.training.pretrain import check_data_sources
enable_cpu_megatron()
from megatron.training import arguments as margs
repo = os.getcwd()
for i, job in enumerate(json.load(open(sys.argv[1]))):
    os.chdir(job["cwd"])
    os.environ.update(job["env"], WORLD_SIZE=str(job["world"]))
    try:
        check_data_sources(sa.check_argv(job["argv"]))
        sys.argv = ["pretrain_sedd.py", *sa.expand_config_argv(job["argv"])]
        with contextlib.redirect_stdout(io.StringIO()):
            args = margs.parse_args(extra_args_provider=sa.add_sedd_args)
            sa.validate_sedd_args(args)
            sa.default_tokenizer(args)
            margs.validate_args(args, {})
        assert args.world_size == job["world"], (args.world_size, job["world"])
        print(f"JOB {i} ok", flush=True)
    except BaseException as err:
        print(f"JOB {i} {type(err).__name__}: {err}".replace(chr(10), " "), flush=True)
    finally:
        os.chdir(repo)
"""


# --------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, str]:
    """Runs every command in order (README first, then the examples) in one scratch directory;
    the results by source line."""
    import torch

    from sedd_megatron.plain import SEDD, SEDDConfig

    tmp = tmp_path_factory.mktemp("readme")
    (tmp / "data").mkdir()
    docs = ["The quick brown fox jumps over the lazy dog.", "A second document, a little longer."]
    (tmp / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs * 4))
    # what training would have saved: a tiny GPT-2-vocabulary model as a Megatron checkpoint
    torch.manual_seed(0)
    config = SEDDConfig(
        tokens=50257, graph="absorb", hidden_size=16, cond_dim=8, length=32, n_blocks=1, n_heads=2
    )
    SEDD(config).save_pretrained(tmp / "plain")
    convert = [sys.executable, "tools/convert_checkpoint.py", "import", "--load",
               str(tmp / "plain"), "--out", str(tmp / "ckpt")]  # fmt: skip
    subprocess.run(convert, cwd=REPO, check=True, capture_output=True, timeout=_TIMEOUT)
    runner = Runner(tmp, tmp / "stubs", tmp / "torchrun.jsonl")
    _write_stubs(runner.stubs)
    for cmd in ALL_COMMANDS:
        try:
            runner.run(cmd)
        except (AssertionError, subprocess.TimeoutExpired, ValueError) as err:
            runner.results[cmd.source] = str(err)
    runner.run_parse_jobs()
    return runner.results


def test_the_commands_were_found():
    sources = {c.source.split(":")[0] for c in ALL_COMMANDS}
    assert "README.md" in sources
    examples = {p.relative_to(REPO).as_posix() for p in REPO.glob("examples/*.sh")}
    examples |= {p.relative_to(REPO).as_posix() for p in REPO.glob("examples/*.sbatch")}
    assert examples <= sources, f"no command found in {examples - sources}"
    programs = " ".join(c.text for c in ALL_COMMANDS)
    for step in ("tools/preprocess_data.py", "pretrain_sedd.py", "sbatch", "make quickstart"):
        assert step in programs


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda c: f"{c.source} {c.text[:40]}")
def test_command_runs_as_written(ran, cmd):
    result = ran.get(cmd.source)
    assert result is not None, f"{cmd.source} was not run"
    if result.startswith("skip:"):
        pytest.skip(result.removeprefix("skip: "))
    assert result == "", f"{cmd.source}: {cmd.text}\n{result}"
