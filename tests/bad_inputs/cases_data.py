"""Bad-input cases of the area "data": tools/build_corpus.py and tools/preprocess_data.py given
bad sizes, output paths, encodings and tokenizer files (garbage GPT-2 vocab/merges files, a
garbage sentencepiece model, a directory that is no Hugging Face tokenizer). Every case fails
before any output is written."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.bad_inputs import Case, make_dir, write

CORPUS = "tools/build_corpus.py"
PREPROCESS = "tools/preprocess_data.py"


def corpus(*args: str) -> tuple[str, ...]:
    return (CORPUS, "--no-progress", *args)


def preprocess(*args: str) -> tuple[str, ...]:
    return (PREPROCESS, "--input", "{text}", "--output-prefix", "{tmp}/out", "--no-progress", *args)


def real_vocab_garbage_merges(tmp: Path, fixtures: dict[str, Path]) -> None:
    """The official GPT-2 encoder.json beside a merges file of prose."""
    from sedd_megatron.datasets.tokenizers import default_gpt2_files

    shutil.copyfile(default_gpt2_files()[0], tmp / "encoder.json")
    (tmp / "merges.txt").write_text("#version: 0.2\nthis is not a merges file\n")


GARBAGE = bytes(range(256)) * 8  # not UTF-8, not a protobuf
VOCAB_MERGES = ("--vocab-file", "{tmp}/encoder.json", "--merge-file", "{tmp}/merges.txt")

CASES = [
    # build_corpus.py: sizes and the output directory (checked before any source is read)
    Case("corpus: --out-dir an existing file", corpus("--out-dir", "{text}"),
         r"--out-dir: .*text\.txt exists and is not a directory"),
    Case("corpus: --out-dir under a file", corpus("--out-dir", "{tmp}/file/corpus"),
         r"--out-dir: cannot create .*/file/corpus: .*/file is not a directory",
         setup=write("file", "x")),
    Case("corpus: --max-train-bytes -5", corpus("--out-dir", "{tmp}/c", "--max-train-bytes", "-5"),
         r"--max-train-bytes must be positive, got -5"),
    Case("corpus: --max-train-bytes 0", corpus("--out-dir", "{tmp}/c", "--max-train-bytes", "0"),
         r"--max-train-bytes must be positive, got 0"),
    Case("corpus: --workers 0", corpus("--out-dir", "{tmp}/c", "--workers", "0"),
         r"--workers must be positive, got 0"),
    Case("corpus: garbage --vocab-file", corpus("--out-dir", "{tmp}/c", *VOCAB_MERGES),
         r"GPT-2 vocab file \(encoder\.json\) .*/encoder\.json is not valid JSON",
         setup=lambda tmp, fx: (write("encoder.json", "hello")(tmp, fx),
                                write("merges.txt", "a b\n")(tmp, fx))),
    # preprocess_data.py: settings and outputs
    Case("preprocess: --workers 0", preprocess("--workers", "0"), r"--workers must be positive"),
    Case("preprocess: --encoding unknown", preprocess("--encoding", "klingon"),
         r"--encoding: unknown text encoding 'klingon'"),
    Case("preprocess: output directory missing",
         (PREPROCESS, "--input", "{text}", "--output-prefix", "{tmp}/no/out"),
         r"output directory does not exist: .*/no"),
    Case("preprocess: PREFIX_text_document.bin is a directory", preprocess(),
         r"output: .*/out_text_document\.bin is a directory",
         setup=make_dir("out_text_document.bin")),
    # tokenizer flags (sedd_megatron.datasets.tokenizers: shared by the data tools)
    Case("preprocess: garbage --vocab-file (binary)", preprocess(*VOCAB_MERGES),
         r"GPT-2 vocab file \(encoder\.json\) .*/encoder\.json is not UTF-8 text",
         setup=lambda tmp, fx: (write("encoder.json", GARBAGE)(tmp, fx),
                                write("merges.txt", "a b\n")(tmp, fx))),
    Case("preprocess: --vocab-file a JSON list", preprocess(*VOCAB_MERGES),
         r"encoder\.json must be a non-empty JSON object of token -> id",
         setup=lambda tmp, fx: (write("encoder.json", "[1, 2]")(tmp, fx),
                                write("merges.txt", "a b\n")(tmp, fx))),
    Case("preprocess: garbage --merge-file", preprocess(*VOCAB_MERGES),
         r"merges\.txt:2: a GPT-2 merges file \(vocab\.bpe\) line is two symbols",
         setup=real_vocab_garbage_merges),
    Case("preprocess: --vocab-file without --merge-file",
         preprocess("--vocab-file", "{text}"), r"needs both --vocab-file .* and --merge-file"),
    Case("preprocess: garbage sentencepiece model",
         preprocess("--tokenizer", "sentencepiece", "--tokenizer-model", "{tmp}/sp.model"),
         r"sentencepiece model .*/sp\.model cannot be read", setup=write("sp.model", GARBAGE)),
    Case("preprocess: --tokenizer-model with gpt2",
         preprocess("--tokenizer-model", "{tmp}/sp.model"),
         r"--tokenizer-model is for --tokenizer sentencepiece/huggingface",
         setup=write("sp.model", GARBAGE)),
    Case("preprocess: not a Hugging Face tokenizer directory",
         preprocess("--tokenizer", "huggingface", "--tokenizer-model", "{tmp}/hf"),
         r".*/hf is not a Hugging Face tokenizer directory", setup=make_dir("hf")),
]  # fmt: skip
