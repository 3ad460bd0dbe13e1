"""Prompts for conditional sampling: prefix, suffix, infill templates and JSONL prompt files.

A prompt fixes ("clamps") some positions of the sequence to given token ids; the sampler holds them
at every step (SEDD Alg. 3: no model change, conditional scores equal unconditional ones by Bayes).

* ``prefix``: its tokens at positions 0, 1, ...
* ``suffix``: its tokens at the last positions of the sequence.
* ``template``: text with holes ``[MASK:n]`` (n >= 1 tokens to generate), laid out from position
  0: ``"The capital of France is [MASK:3]. It is known for [MASK:12]."``. Positions after the
  template are generated as well. A template can be combined with a suffix, not with a prefix.
  The text between holes is tokenized piece by piece.

Spaces at the end of a prefix or of the text before a hole are dropped: byte-level BPE (GPT-2)
attaches a space to the word after it, so the generated token carries it ("is [MASK:3]" gives
"is" then " Paris", not "is", " ", "Paris").

Every problem raises one :class:`PromptError` whose message names it.
"""

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sedd_megatron.errors import PromptError

PROMPT_KEYS = ("id", "prefix", "suffix", "template")
_HOLE = re.compile(r"\[MASK:(\d+)\]")

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Prompt:
    """What to condition on; all fields None = unconditional. ``id`` is only echoed."""

    prefix: str | None = None
    suffix: str | None = None
    template: str | None = None
    id: str | int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False) if self.to_dict() else "{}"


@dataclass(frozen=True)
class Condition:
    """Clamped positions ``locs`` (K,) and their token ids ``ids`` (K,), int64."""

    locs: torch.Tensor
    ids: torch.Tensor

    @staticmethod
    def none() -> "Condition":
        return Condition(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))

    def dense(self, seq_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, values), each (seq_length,): where the sequence is clamped, and to what."""
        mask = torch.zeros(seq_length, dtype=torch.bool)
        values = torch.zeros(seq_length, dtype=torch.long)
        mask[self.locs] = True
        values[self.locs] = self.ids
        return mask, values


def parse_template(template: str) -> list[str | int]:
    """Split a template into text pieces (str) and hole lengths (int), in order."""
    if not template or not template.strip():
        raise PromptError("the template is empty")
    parts: list[str | int] = []
    pos = 0
    while (start := template.find("[MASK", pos)) >= 0:
        parts.append(template[pos:start])
        hole = _HOLE.match(template, start)
        if hole is None:
            end = template.find("]", start)
            if end < 0:
                raise PromptError(
                    f"unclosed hole {template[start:start + 12]!r}... at character {start} of "
                    "the template: write [MASK:n] with n a positive integer"
                )
            raise PromptError(
                f"malformed hole {template[start:end + 1]!r} at character {start} of the "
                "template: write [MASK:n] with n a positive integer"
            )
        if int(hole.group(1)) == 0:
            raise PromptError(
                f"hole {hole.group(0)!r} at character {start} of the template has length 0: "
                "a hole needs at least one token"
            )
        parts.append(int(hole.group(1)))
        pos = hole.end()
    parts.append(template[pos:])
    return [p for p in parts if p != ""]


def _encode(encode: Encode, text: str, what: str, num_tokens: int | None) -> list[int]:
    ids = list(encode(text))
    if num_tokens is not None:
        bad = [i for i in ids if not 0 <= i < num_tokens]
        if bad:
            raise PromptError(
                f"{what} has token id {bad[0]}, outside the model's vocabulary of {num_tokens} "
                "tokens (wrong tokenizer?)"
            )
    return ids


def encode_prompt(
    prompt: Prompt, encode: Encode, seq_length: int, num_tokens: int | None = None
) -> Condition:
    """Turn a prompt into the clamped positions and ids of a sequence of ``seq_length``."""
    if prompt.prefix is not None and prompt.template is not None:
        raise PromptError("a prompt takes a prefix or a template, not both")
    for name in ("prefix", "suffix"):
        value = getattr(prompt, name)
        if value is not None and not value:
            raise PromptError(f"the {name} is empty")
    pieces: list[list[int] | int] = []
    if prompt.prefix is not None:
        pieces = [_encode(encode, prompt.prefix.rstrip(" "), "the prefix", num_tokens)]
    elif prompt.template is not None:
        parts = parse_template(prompt.template)
        for part, after in zip(parts, parts[1:] + [None], strict=True):
            if isinstance(part, str):
                text = part.rstrip(" ") if isinstance(after, int) else part
                part = _encode(encode, text, "the template", num_tokens)
            pieces.append(part)
    suffix = []
    if prompt.suffix is not None:
        suffix = _encode(encode, prompt.suffix, "the suffix", num_tokens)
    locs: list[int] = []
    ids: list[int] = []
    used = 0
    for piece in pieces:
        if isinstance(piece, int):
            used += piece
        else:
            locs.extend(range(used, used + len(piece)))
            ids.extend(piece)
            used += len(piece)
    if used + len(suffix) > seq_length:
        parts = (
            [f"{'prefix' if prompt.prefix is not None else 'template'} {used}"] if pieces else []
        )
        parts += [f"suffix {len(suffix)}"] if suffix else []
        raise PromptError(
            f"the prompt needs {used + len(suffix)} positions ({' + '.join(parts)}) but the "
            f"sequence has {seq_length}: shorten the prompt or raise --seq-length"
        )
    locs.extend(range(seq_length - len(suffix), seq_length))
    ids.extend(suffix)
    return Condition(torch.tensor(locs, dtype=torch.long), torch.tensor(ids, dtype=torch.long))


def prompt_from_dict(record: dict, where: str = "prompt") -> Prompt:
    """A Prompt from a JSON object with keys among ``PROMPT_KEYS``."""
    if not isinstance(record, dict):
        raise PromptError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(PROMPT_KEYS))
    if unknown:
        raise PromptError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(PROMPT_KEYS)})"
        )
    for key in ("prefix", "suffix", "template"):
        if key in record and not isinstance(record[key], str):
            raise PromptError(f"{where}: {key!r} must be a string")
    return Prompt(**record)


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts from a JSONL file (UTF-8): one object per line (blank lines skipped); ``{}`` is
    unconditional. Keys: id, prefix, suffix, template."""
    path = Path(path)
    if not path.exists():
        raise PromptError(f"prompts file {path} does not exist")
    if path.is_dir():
        raise PromptError(f"prompts file {path} is a directory: name a JSONL file")
    prompts = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PromptError(f"{path}:{number}: not valid JSON ({e.msg})") from None
                prompts.append(prompt_from_dict(record, f"{path}:{number}"))
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise PromptError(f"cannot read prompts file {path}: {e.strerror or e}") from None
    if not prompts:
        raise PromptError(f"{path}: no prompts in the file")
    return prompts


def ids_encoder(text: str) -> list[int]:
    """Token ids written as text ("12 7 991" or "12,7,991"): for models without a tokenizer."""
    try:
        return [int(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        raise PromptError(
            f"without a tokenizer (--no-detokenize) prompts are token ids, got {text!r}"
        ) from None


def conditions_for(
    prompts: Sequence[Prompt], encode: Encode, seq_length: int, num_tokens: int | None = None
) -> list[Condition]:
    """Encode every prompt (each error names the prompt)."""
    out = []
    for prompt in prompts:
        try:
            out.append(encode_prompt(prompt, encode, seq_length, num_tokens))
        except PromptError as e:
            if len(prompts) == 1:
                raise
            raise PromptError(f"prompt {prompt.describe()}: {e}") from None
    return out


def check_prompts(
    prompts: Sequence[Prompt],
    encode: Encode,
    seq_length: int | None = None,
    num_tokens: int | None = None,
) -> None:
    """Raise the PromptError :func:`conditions_for` would, before any model is loaded: every
    prompt encodes (and fits ``seq_length`` tokens, when given; ids below ``num_tokens``)."""
    conditions_for(prompts, encode, seq_length if seq_length is not None else 2**62, num_tokens)
