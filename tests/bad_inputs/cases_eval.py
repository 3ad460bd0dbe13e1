"""Bad-input cases of the area "eval": tools/eval_elbo_sedd.py and tools/eval_gen_ppl.py given
bad estimator settings, output paths and data. Settings, paths and the data's index are checked
before torch or the model loads; token ids against the model's vocabulary right after it (plain
and torch_dist), before any evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy

from tests.bad_inputs import Case, make_dir, write

ELBO = "tools/eval_elbo_sedd.py"
GEN_PPL = "tools/eval_gen_ppl.py"
LM_EVAL = "tools/lm_eval_sedd.py"


def lm_eval(model_args: str, *args: str) -> tuple[str, ...]:
    return (LM_EVAL, "--model", "sedd", "--model_args", model_args, "--tasks", "x", *args)


def elbo(*args: str, load: str = "{plain}") -> tuple[str, ...]:
    return (ELBO, "--load", load, "--data", "{data}", "--blocks", "1", "--no-progress", *args)


def gen_ppl(*args: str) -> tuple[str, ...]:
    return (GEN_PPL, "--samples", "{tmp}/s.jsonl", "--no-progress", *args)


def samples(text: str = '{"text": "a b c", "settings": {"steps": 8}}\n'):
    return write("s.jsonl", text)


def wide_ids(tmp: Path, fixtures: dict[str, Path]) -> None:
    """``tmp/wide``: an indexed dataset (Megatron's own writer) with ids up to 1499: the
    fixture models have a vocabulary of 1000."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(tmp / "wide.bin"), dtype=numpy.uint16)
    for start in (0, 700):
        doc = numpy.arange(start, start + 800, dtype=numpy.uint16)
        builder.add_document(doc, [len(doc)])
    builder.finalize(str(tmp / "wide.idx"))


def truncated_index(tmp: Path, fixtures: dict[str, Path]) -> None:
    """``tmp/cut``: a copy of the data fixture whose .idx lost its last 100 bytes."""
    shutil.copyfile(f"{fixtures['data']}.bin", tmp / "cut.bin")
    data = Path(f"{fixtures['data']}.idx").read_bytes()
    (tmp / "cut.idx").write_bytes(data[:-100])


WIDE = r"indexed dataset '.*/wide' has token ids in \[0, 1499\], outside the vocabulary of 1000"
CI = r"the confidence interval estimates each block's Monte-Carlo variance"

CASES = [
    # estimator settings
    Case("elbo: --level 1.5", elbo("--level", "1.5"), r"--level \(the confidence level\) must "
         r"be in \(0, 1\), e\.g\. 0\.95; got 1\.5"),
    Case("elbo: --level 0", elbo("--level", "0"), r"--level .* must be in \(0, 1\).*got 0\.0"),
    Case("elbo: --num-t-samples 1", elbo("--num-t-samples", "1"),
         rf"--num-t-samples must be >= 2, got 1: {CI}"),
    Case("elbo: --replicates 1", elbo("--design", "stratified", "--num-t-samples", "8",
                                      "--replicates", "1"), r"--replicates must be >= 2, got 1"),
    Case("elbo: --replicates not dividing", elbo("--design", "importance", "--num-t-samples",
                                                 "8", "--replicates", "3"),
         r"--replicates \(3\) must divide --num-t-samples \(8\)"),
    Case("elbo: --batch-size 0", elbo("--batch-size", "0"), r"--batch-size must be positive"),
    Case("elbo: --blocks -1", elbo("--blocks=-1"), r"--blocks must be positive, got -1"),
    Case("elbo: --seq-length 0", elbo("--seq-length", "0"), r"--seq-length must be positive"),
    Case("elbo: --t-eps 1", elbo("--t-eps", "1"), r"--t-eps must be in \(0, 1\), got 1\.0"),
    Case("elbo: --compare a design twice", elbo("--compare", "mc,mc"),
         r"--compare: a design is named twice"),
    Case("elbo: --tail-samples 1", elbo("--tail-samples", "1"),
         r"--tail-samples must be 0 \(off\) or >= 2, got 1: the confidence interval of the "
         r"\[0, t_eps\] term needs 2 independent replicates"),
    Case("elbo: --tail-samples beyond memory", elbo("--tail-samples", "1000000000000"),
         r"--tail-samples 1000000000000 would need at least [\d.]+ TB of memory"),
    Case("elbo: --tail-samples -1", elbo("--tail-samples=-1"),
         r"--tail-samples must be non-negative, got -1"),
    Case("elbo: --tail-samples with --compare", elbo("--compare", "mc,importance",
                                                     "--tail-samples", "4"),
         r"--tail-samples: --compare compares the designs of the \[t_eps, 1\] term only"),
    # output paths (before the model loads; nothing is written)
    Case("elbo: --output an existing directory", elbo("--output", "{tmp}/out"),
         r"--output: .*/out is a directory; give a file name", setup=make_dir("out")),
    Case("elbo: --output under a file", elbo("--output", "{tmp}/file/e.json"),
         r"--output: directory .*/file does not exist", setup=write("file", "x")),
    # data
    Case("elbo: --data missing", (ELBO, "--load", "{plain}", "--data", "{tmp}/none.txt"),
         r"evaluation data not found: '.*/none\.txt'"),
    Case("elbo: --data a .bin file", (ELBO, "--load", "{plain}", "--data", "{data}.bin"),
         r"is one file of an indexed dataset: pass its prefix"),
    Case("elbo: --data truncated .idx", (ELBO, "--load", "{plain}", "--data", "{tmp}/cut"),
         r"cut\.idx: truncated index", setup=truncated_index),
    Case("elbo: token ids beyond the vocabulary (plain)",
         (ELBO, "--load", "{plain}", "--data", "{tmp}/wide", "--no-progress",
          "--output", "{tmp}/e.json"), WIDE, setup=wide_ids),
    Case("elbo: token ids beyond the vocabulary (torch_dist)",
         (ELBO, "--load", "{megatron}", "--data", "{tmp}/wide", "--no-progress"), WIDE,
         setup=wide_ids),
    # eval_gen_ppl.py (all before torch loads)
    Case("gen-ppl: --batch-size 0", gen_ppl("--batch-size", "0"),
         r"--batch-size must be positive, got 0", setup=samples()),
    Case("gen-ppl: --max-length 1", gen_ppl("--max-length", "1"),
         r"--max-length must be >= 2, got 1", setup=samples()),
    Case("gen-ppl: --device gpu", gen_ppl("--device", "gpu"),
         r"--device: unknown device 'gpu'", setup=samples()),
    Case("gen-ppl: --lm not a model directory", gen_ppl("--lm", "{tmp}"),
         r"--lm: .* is not a Hugging Face model directory \(no config\.json\)", setup=samples()),
    Case("gen-ppl: --output an existing directory", gen_ppl("--output", "{tmp}/out"),
         r"--output: .*/out is a directory",
         setup=lambda tmp, fx: (samples()(tmp, fx), (tmp / "out").mkdir())),
    Case("gen-ppl: tokens not a list of ids", gen_ppl(),
         r"s\.jsonl:1: 'tokens' must be a list of non-negative integer token ids",
         setup=samples('{"text": "a b", "tokens": [1, -2]}\n')),
    Case("gen-ppl: --plot without sampling steps", gen_ppl("--plot", "{tmp}/p.png"),
         r"no samples file records its steps", setup=samples('{"text": "a b"}\n')),
    Case("lm-eval: model args without pretrained", lm_eval("num_t_samples=10"),
         r"model arg pretrained=DIR is required"),
    Case("lm-eval: unknown model arg", lm_eval("pretrained={plain},temperature=0.5"),
         r"unknown model arg\(s\) for sedd: temperature"),
    Case("lm-eval: num_t_samples 1", lm_eval("pretrained={plain},num_t_samples=1"),
         r"model arg num_t_samples must be >= 2, got 1"),
    Case("lm-eval: another model", (LM_EVAL, "--model", "hf", "--tasks", "x"),
         r"--model must be sedd, got 'hf'"),
]  # fmt: skip
