"""Bad-input cases of the area "sampling": tools/generate_sedd.py given bad sampler settings,
output paths, prompts and model directories, on the plain fixture (``--no-detokenize``: token
ids as prompts) and the torch_dist one. Settings and paths fail before the model loads."""

from __future__ import annotations

from tests.bad_inputs import Case, make_dir, write

GENERATE = "tools/generate_sedd.py"


def plain(*args: str) -> tuple[str, ...]:
    return (GENERATE, "--load", "{plain}", "--no-detokenize", "--no-progress", *args)


def megatron(*args: str) -> tuple[str, ...]:
    return (GENERATE, "--load", "{megatron}", "--no-detokenize", "--no-progress", *args)


OUT = "{tmp}/out.jsonl"

CASES = [
    # sampler settings (argument parsing, before the model loads)
    Case("generate: --eps 2", plain("--eps", "2", "--output", OUT), r"--eps: eps must lie "
         r"strictly between 0 and 1 .*got 2\.0"),
    Case("generate: --eps 0 (torch_dist)", megatron("--eps", "0"),
         r"--eps: eps must lie strictly between 0 and 1"),
    Case("generate: --eps nan", plain("--eps", "nan"), r"--eps: eps must lie strictly between"),
    Case("generate: --steps 0", plain("--steps", "0"), r"--steps: steps must be positive, got 0"),
    Case("generate: --steps beyond memory", plain("--steps", "1000000000000"),
         r"--steps: steps 1000000000000 would need at least [\d.]+ TB of memory"),
    Case("generate: --steps not a number", plain("--steps", "many"),
         r"--steps: expected an integer, got 'many'"),
    Case("generate: --predictor unknown", plain("--predictor", "heun"),
         r"--predictor: invalid choice: 'heun'"),
    Case("generate: --num-samples 0", plain("--num-samples", "0", "--output", OUT),
         r"--num-samples: num_samples must be positive, got 0"),
    Case("generate: --batch-size 0 (torch_dist)", megatron("--batch-size", "0"),
         r"--batch-size: batch_size must be positive, got 0"),
    Case("generate: --seq-length 0", plain("--seq-length", "0"),
         r"--seq-length: seq_length must be positive, got 0"),
    Case("generate: --seq-length -8", plain("--seq-length=-8"),
         r"--seq-length: seq_length must be positive, got -8"),
    Case("generate: --iteration -1 (torch_dist)", megatron("--iteration", "-1"),
         r"--iteration: iteration must be non-negative, got -1"),
    Case("generate: --reuse-scores on with --fp32-sampling",
         plain("--reuse-scores", "on", "--fp32-sampling", "--output", OUT),
         r"--reuse-scores on cannot be combined with --fp32-sampling"),
    Case("generate: --reuse-scores unknown", plain("--reuse-scores", "always"),
         r"--reuse-scores: invalid choice: 'always'"),
    Case("generate: --seed -1", plain("--seed", "-1"), r"--seed: seed must be non-negative"),
    # output paths (before the model loads)
    Case("generate: --output an existing directory", plain("--output", "{tmp}/outdir"),
         r"output .*/outdir is a directory: name the JSONL file", setup=make_dir("outdir")),
    Case("generate: --output in a missing directory", plain("--output", "{tmp}/no/out.jsonl"),
         r"cannot write .*/no/out\.jsonl: directory .*/no does not exist"),
    Case("generate: --output under a file", plain("--output", "{tmp}/file/out.jsonl"),
         r"cannot write .*: .*/file is not a directory", setup=write("file", "x")),
    Case("generate: --output.partial a directory", plain("--output", "{tmp}/o.jsonl"),
         r"output .*/o\.jsonl\.partial is a directory", setup=make_dir("o.jsonl.partial")),
    # prompts
    Case("generate: --prompts missing", plain("--prompts", "{tmp}/missing.jsonl"),
         r"prompts file .*/missing\.jsonl does not exist"),
    Case("generate: --prompts a directory", plain("--prompts", "{tmp}"),
         r"prompts file .* is a directory"),
    Case("generate: --prompts bad JSON line", plain("--prompts", "{tmp}/p.jsonl", "--output", OUT),
         r"p\.jsonl:2: not valid JSON", setup=write("p.jsonl", '{"prefix": "1 2"}\n{"prefix": \n')),
    Case("generate: --prompts unknown key", plain("--prompts", "{tmp}/p.jsonl"),
         r"p\.jsonl:1: unknown key 'text'", setup=write("p.jsonl", '{"text": "1 2"}\n')),
    Case("generate: --prompts not UTF-8", plain("--prompts", "{tmp}/p.jsonl"),
         r"p\.jsonl: not UTF-8 text",
         setup=lambda tmp, fx: (tmp / "p.jsonl").write_bytes(b'{"prefix": "\xff"}\n')),
    Case("generate: --prompts with --prefix", plain("--prompts", "{tmp}/p.jsonl", "--prefix", "1"),
         r"--prompts cannot be combined with --prefix", setup=write("p.jsonl", "{}\n")),
    Case("generate: template hole of length 0", plain("--template", "1 [MASK:0] 2"),
         r"hole '\[MASK:0\]' at character 2 of the template has length 0"),
    Case("generate: template hole unclosed", plain("--template", "1 [MASK:3"),
         r"unclosed hole '\[MASK:3'"),
    Case("generate: prompt longer than --seq-length", plain("--seq-length", "3", "--prefix",
         "1 2 3 4"), r"the prompt needs 4 positions \(prefix 4\) but the sequence has 3"),
    Case("generate: prompt longer than the model's length", plain("--suffix", " ".join(["7"] * 40),
         "--output", OUT), r"the prompt needs 40 positions \(suffix 40\) but the sequence has 32"),
    Case("generate: token id outside the vocabulary", plain("--prefix", "5 1000", "--output", OUT),
         r"the prefix has token id 1000, outside the model's vocabulary of 1000 tokens"),
    Case("generate: token id outside the vocabulary (torch_dist)", megatron("--suffix", "1 5000"),
         r"the suffix has token id 5000, outside the model's vocabulary of 1000 tokens"),
    Case("generate: text prompt without a tokenizer", plain("--prefix", "hello world"),
         r"without a tokenizer \(--no-detokenize\) prompts are token ids, got 'hello world'"),
    # model directories
    Case("generate: missing model directory",
         (GENERATE, "--load", "{tmp}/no_model", "--no-detokenize"),
         r"no_model: no such checkpoint directory"),
    Case("generate: empty model directory",
         (GENERATE, "--load", "{tmp}/empty", "--no-detokenize"),
         r"empty is empty: not a SEDD checkpoint", setup=make_dir("empty")),
]  # fmt: skip
