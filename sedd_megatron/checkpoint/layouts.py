"""Whether a tensor x pipeline parallel layout fits a model, checked before any work.

The tools that take ``--tp``/``--pp`` (convert_checkpoint.py, generate_sedd.py,
eval_elbo_sedd.py) call these before they spawn processes or start the Megatron world, so a
layout that cannot work is one clear :class:`~sedd_megatron.errors.ConfigError` instead of a
failure on every rank. What is checked: TP and PP positive, the attention heads and the hidden
size divisible by TP, every TP rank holding real vocabulary rows after Megatron's padding, at
least one block per pipeline stage, and (where given) a world size that is a multiple of TP x PP.

Blocks that PP does not divide are split unevenly, as Megatron does with
``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage`` (pretrain flags
``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers``): see
:func:`pipeline_split` (:data:`SPLIT_RULE` is the one-line description for the tools' help).

Only config.json or the saved pretrain_sedd.py arguments are read (no weights, no world).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sedd_megatron.checkpoint import locate
from sedd_megatron.diffusion import get_graph
from sedd_megatron.errors import CheckpointError, ConfigError
from sedd_megatron.plain.checkpoint import CONFIG_NAME
from sedd_megatron.plain.config import SEDDConfig
from sedd_megatron.training.architecture import query_groups

DEFAULT_VOCAB_DIVISOR = 128  # Megatron's --make-vocab-size-divisible-by default

SPLIT_RULE = (
    "when PP does not divide the blocks, the middle stages get equal shares and the first and "
    "last stages the rest, as evenly as Megatron allows (ties: fewer blocks on the first and "
    "last stages, then the extra block on the first): 3 blocks at PP=2 -> 2+1, "
    "7 at PP=4 -> 2+2+2+1, 10 at PP=4 -> 2+3+3+2"
)


def pipeline_split(n_blocks: int, pp: int) -> tuple[int, ...]:
    """Blocks per pipeline stage (first to last); see :data:`SPLIT_RULE`.

    Megatron's uneven pipeline gives every middle stage the same number ``m`` of blocks; the
    first and last stages may differ. Among those splits this picks the smallest largest stage,
    then the largest ``m``, with the first stage taking the odd block of the first + last pair.
    Needs ``1 <= pp <= n_blocks``.
    """
    if not 1 <= pp <= n_blocks:
        raise ValueError(f"cannot split {n_blocks} blocks over {pp} pipeline stages")
    if n_blocks % pp == 0:
        return (n_blocks // pp,) * pp
    if pp == 2:
        return (n_blocks - n_blocks // 2, n_blocks // 2)
    best = None
    for middle in range(1, n_blocks):
        ends = n_blocks - (pp - 2) * middle  # blocks left for the first and last stages
        if ends < 2:
            break
        first, last = ends - ends // 2, ends // 2
        key = (max(first, middle, last), -middle)
        if best is None or key < best[0]:
            best = (key, (first, *([middle] * (pp - 2)), last))
    return best[1]


@dataclass(frozen=True)
class Layout:
    """A checked TP x PP layout of a model and its pipeline split."""

    tp: int
    pp: int
    stages: tuple[int, ...]  # blocks per pipeline stage, first to last

    @property
    def uneven(self) -> bool:
        return len(set(self.stages)) > 1

    def transformer_config_kwargs(self) -> dict:
        """Megatron TransformerConfig fields for this split (none for an even one)."""
        if not self.uneven:
            return {}
        return {
            "num_layers_in_first_pipeline_stage": self.stages[0],
            "num_layers_in_last_pipeline_stage": self.stages[-1],
        }

    def pretrain_flags(self) -> list[str]:
        """Megatron's pretrain flags for this split (none for an even one)."""
        if not self.uneven:
            return []
        return [
            "--decoder-first-pipeline-num-layers", str(self.stages[0]),
            "--decoder-last-pipeline-num-layers", str(self.stages[-1]),
        ]  # fmt: skip


def check_layout(
    *,
    n_blocks: int,
    n_heads: int,
    hidden_size: int,
    vocab_rows: int | None,
    tp: int,
    pp: int,
    world_size: int | None = None,
    vocab_divisor: int = DEFAULT_VOCAB_DIVISOR,
    n_kv_heads: int | None = None,
    ffn_hidden_size: int | None = None,
) -> Layout:
    """The layout TP x PP of a model of this shape; ConfigError naming every problem if it does
    not fit. ``vocab_rows`` None skips the vocabulary check; ``world_size`` None the process
    count check; ``n_kv_heads`` / ``ffn_hidden_size`` None (the reference's n_heads / 4 x
    hidden) need nothing beyond the heads and hidden size."""
    if not (isinstance(tp, int) and isinstance(pp, int) and tp >= 1 and pp >= 1):
        raise ConfigError(f"--tp and --pp must be positive integers, got TP={tp}, PP={pp}")
    problems = []
    if n_heads % tp:
        problems.append(f"n_heads {n_heads} is not divisible by TP={tp}")
    if hidden_size % tp:
        problems.append(f"hidden_size {hidden_size} is not divisible by TP={tp}")
    if n_kv_heads is not None and n_kv_heads % tp:
        problems.append(f"the {n_kv_heads} key/value heads are not divisible by TP={tp}")
    if ffn_hidden_size is not None and ffn_hidden_size % tp:
        problems.append(f"the MLP width {ffn_hidden_size} is not divisible by TP={tp}")
    if vocab_rows is not None and tp > 1:
        multiple = vocab_divisor * tp
        padded = -(-vocab_rows // multiple) * multiple
        per_rank = padded // tp
        if per_rank * (tp - 1) >= vocab_rows:
            problems.append(
                f"the {vocab_rows} vocabulary rows, padded to {padded} ({per_rank} per TP rank), "
                f"leave the last TP rank only padding: use a smaller TP"
            )
    if pp > n_blocks:
        problems.append(f"{n_blocks} blocks cannot fill PP={pp} pipeline stages (one block each)")
    if world_size is not None and world_size % (tp * pp):
        problems.append(
            f"TP={tp} x PP={pp} needs a multiple of {tp * pp} processes, got {world_size} "
            f"(run under torchrun --nproc_per_node={tp * pp})"
        )
    if problems:
        raise ConfigError(
            f"layout TP={tp} x PP={pp} does not fit the model: " + "; ".join(problems)
        )
    return Layout(tp, pp, pipeline_split(n_blocks, pp))


def check_config_layout(
    config,
    tp: int,
    pp: int,
    *,
    world_size: int | None = None,
    vocab_divisor: int = DEFAULT_VOCAB_DIVISOR,
) -> Layout:
    """:func:`check_layout` for a published-layout config (``plain.SEDDConfig``)."""
    return check_layout(
        n_blocks=config.n_blocks,
        n_heads=config.n_heads,
        hidden_size=config.hidden_size,
        vocab_rows=config.vocab_rows,
        tp=tp,
        pp=pp,
        world_size=world_size,
        vocab_divisor=vocab_divisor,
        n_kv_heads=config.kv_heads,
        ffn_hidden_size=config.ffn_width,
    )


def read_plain_config(directory: str | Path):
    """config.json of a published-layout directory (no weights read); CheckpointError if absent
    or invalid."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory")
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path} has no {CONFIG_NAME}")
    try:
        return SEDDConfig.from_json(path / CONFIG_NAME)
    except ConfigError as err:
        raise CheckpointError(str(err)) from err


def check_source_layout(
    source: str | Path,
    tp: int,
    pp: int,
    *,
    iteration: int | None = None,
    world_size: int | None = None,
) -> Layout:
    """:func:`check_layout` for the model in ``source``: a published-layout directory (its
    config.json) or a pretrain_sedd.py checkpoint (its saved arguments)."""
    if locate.source_kind(source) == "plain":
        config = read_plain_config(source)
        return check_config_layout(config, tp, pp, world_size=world_size)
    args = locate.read_checkpoint_args(source, iteration)
    return check_layout(
        n_blocks=args.num_layers,
        n_heads=args.num_attention_heads,
        hidden_size=args.hidden_size,
        vocab_rows=_vocab_rows(args),
        tp=tp,
        pp=pp,
        world_size=world_size,
        vocab_divisor=args.make_vocab_size_divisible_by,
        n_kv_heads=query_groups(args),
        ffn_hidden_size=args.ffn_hidden_size,
    )


def _vocab_rows(args) -> int | None:
    """Vocabulary rows of a checkpoint's model when known without building its tokenizer."""
    if args.tokenizer_type != "NullTokenizer":
        return None
    return get_graph(args.sedd_graph, int(args.vocab_size)).dim


def check_tool_layout(
    source: str | Path, tp: int, pp: int, backend: str, *, iteration: int | None = None
) -> Layout | None:
    """What generate_sedd.py / eval_elbo_sedd.py check before starting a world: the plain
    backend runs in one process (TP = PP = 1); the Megatron one needs a layout that fits the
    model in ``source`` and a ``WORLD_SIZE`` (torchrun's) that is a multiple of TP x PP."""
    if backend == "plain":
        if (tp, pp) != (1, 1):
            raise ConfigError(
                f"TP={tp} x PP={pp} needs the Megatron backend under torchrun "
                f"(--backend megatron, torchrun --nproc_per_node={max(tp * pp, 1)}); "
                "the plain backend runs in one process"
            )
        return None
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return check_source_layout(source, tp, pp, iteration=iteration, world_size=world_size)
