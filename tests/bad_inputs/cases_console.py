"""Usage errors of every entry point: one line (no usage dump, no import warnings), exit 2."""

from tests.bad_inputs import Case

# each tool with its required arguments, so that the unknown flag is what is reported
TOOLS = {
    "tools/generate_sedd.py": ("--load", "{plain}"),
    "tools/eval_elbo_sedd.py": ("--load", "{plain}"),
    "tools/eval_gen_ppl.py": ("--samples", "{text}"),
    "tools/convert_checkpoint.py": ("export", "--load", "{megatron}", "--out", "{tmp}/out"),
    "tools/preprocess_data.py": ("--input", "{text}", "--output-prefix", "{tmp}/out"),
    "tools/build_corpus.py": (),
    "pretrain_sedd.py": (),
}

CASES = [
    Case(
        f"{tool.split('/')[-1]}: unknown flag",
        (tool, *required, "--no-such-flag"),
        r"unrecognized arguments: --no-such-flag",
    )
    for tool, required in TOOLS.items()
] + [
    Case(
        "generate: not a number",
        ("tools/generate_sedd.py", "--load", "{plain}", "--steps", "many"),
        r"--steps: expected an integer, got 'many'",
    ),
    Case("convert: no command", ("tools/convert_checkpoint.py",), r"required"),
    Case(
        "pretrain: bad choice",
        ("pretrain_sedd.py", "--sedd-graph", "gaussian", "--mock-data"),
        r"--sedd-graph: invalid choice: 'gaussian'",
    ),
    Case(
        "pretrain: vocab file without merges",
        ("pretrain_sedd.py", "--mock-data", "--tokenizer-type", "GPT2BPETokenizer",
         "--vocab-file", "{text}", "--num-layers", "2",
         "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
         "--max-position-embeddings", "32", "--micro-batch-size", "1", "--train-iters", "1",
         "--lr-warmup-iters", "0"),
        r"needs both --vocab-file and --merge-file",
    ),  # fmt: skip
]
