"""Usage errors of every entry point: one line (no usage dump, no import warnings), exit 2."""

from tests.bad_inputs import Case

TOOLS = (
    "tools/generate_sedd.py",
    "tools/eval_elbo_sedd.py",
    "tools/eval_gen_ppl.py",
    "tools/convert_checkpoint.py",
    "tools/preprocess_data.py",
    "tools/build_corpus.py",
    "pretrain_sedd.py",
)

CASES = [
    Case(f"{tool.split('/')[-1]}: unknown flag", (tool, "--no-such-flag"), r"--no-such-flag")
    for tool in TOOLS
] + [
    Case(
        "generate: not a number",
        ("tools/generate_sedd.py", "{plain}", "--steps", "many"),
        r"--steps: invalid int value: 'many'",
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
