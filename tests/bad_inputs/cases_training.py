"""Bad-input cases of the area "training": pretrain_sedd.py given bad training settings, --config
files and data, on Megatron's mock data (or the shared ``{data}`` prefix) and a tiny model.
Every case fails while the arguments are checked, before pretrain() starts: nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy

from tests.bad_inputs import Case, write

# A tiny absorbing-graph SEDD (tiny_absorb's shape): each case adds the flag under test last.
BASE = (
    "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--seq-length", "32", "--max-position-embeddings", "32", "--sedd-cond-dim", "32",
    "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
    "--micro-batch-size", "2", "--global-batch-size", "2", "--lr", "1e-3",
    "--lr-warmup-iters", "1", "--train-iters", "3", "--eval-iters", "0",
)  # fmt: skip


def mock(*args: str) -> tuple[str, ...]:
    return ("pretrain_sedd.py", *BASE, "--mock-data", *args)


def on_data(*args: str) -> tuple[str, ...]:
    return ("pretrain_sedd.py", *BASE, *args)


def ar(*args: str) -> tuple[str, ...]:
    return ("benchmarks/pretrain_ar_baseline.py", *BASE, "--mock-data", *args)


def ids_up_to(high: int):
    """An indexed dataset ``{tmp}/big`` with one id ``high``, at token 685."""

    def setup(tmp: Path, fixtures: dict[str, Path]) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # lazy: heavy

        rng = numpy.random.default_rng(3)
        builder = IndexedDatasetBuilder(str(tmp / "big.bin"), dtype=numpy.uint16)
        for n in range(30):
            doc = rng.integers(0, 1000, size=40).astype(numpy.uint16)
            if n == 17:
                doc[5] = high
            builder.add_document(doc, [len(doc)])
        builder.finalize(str(tmp / "big.idx"))

    return setup


CASES = [
    Case("pretrain: --distribute-saved-activations under sequence parallelism",
         mock("--tensor-model-parallel-size", "2", "--sequence-parallel",
              "--recompute-granularity", "full", "--recompute-method", "uniform",
              "--distribute-saved-activations"),
         r"--distribute-saved-activations needs no --sequence-parallel"),
    # learning-rate schedule
    Case("pretrain: --sedd-time-conditioning none on the uniform graph",
         mock("--sedd-graph", "uniform", "--sedd-time-conditioning", "none"),
         r"--sedd-time-conditioning none is only defined for --sedd-graph absorb"),
    Case("pretrain: --sedd-time-conditioning none without sigma scaling",
         mock("--sedd-time-conditioning", "none", "--no-sedd-scale-by-sigma"),
         r"--sedd-time-conditioning none divides by e\^sigma - 1 itself"),
    Case("pretrain: --sedd-time-conditioning unknown", mock("--sedd-time-conditioning", "t"),
         r"--sedd-time-conditioning: invalid choice: 't'"),
    Case("pretrain: --lr -1", mock("--lr", "-1"), r"--lr must not be negative, got -1\.0"),
    Case("pretrain: --lr-warmup-iters -5", mock("--lr-warmup-iters", "-5"),
         r"--lr-warmup-iters must not be negative, got -5"),
    # model shape and batch (Megatron asserts these without a message, or fails mid-run)
    Case("pretrain: hidden size not divisible by heads", mock("--num-attention-heads", "5"),
         r"--hidden-size \(64\) must be divisible by --num-attention-heads \(5\)"),
    Case("pretrain: heads not divisible by tensor parallel size",
         mock("--tensor-model-parallel-size", "3"),
         r"--num-attention-heads \(4\) must be divisible by --tensor-model-parallel-size \(3\)"),
    Case("pretrain: --seq-length 0", mock("--seq-length", "0"),
         r"--seq-length must be positive, got 0"),
    Case("pretrain: --micro-batch-size 0", mock("--micro-batch-size", "0"),
         r"--micro-batch-size must be positive, got 0"),
    Case("pretrain: --save without --save-interval", mock("--save", "{tmp}/ckpt"),
         r"--save needs --save-interval"),
    # SEDD flags
    Case("pretrain: unknown graph", mock("--sedd-graph", "gaussian"),
         r"--sedd-graph: invalid choice: 'gaussian'"),
    Case("pretrain: squared-ReLU MLP", mock("--squared-relu"),
         r"--squared-relu, --quick-geglu: not supported: the MLP is tanh-GELU"),
    Case("pretrain: query groups that do not divide the heads",
         mock("--group-query-attention", "--num-query-groups", "3"),
         r"--num-query-groups \(3\) must divide --num-attention-heads"),
    # --config files
    Case("pretrain: --config key given twice", mock("--config", "{tmp}/c.yaml"),
         r"c\.yaml: line 3: 'lr' is given twice \(first on line 1\)",
         setup=write("c.yaml", "lr: 0.001\nnum-layers: 2\nlr: 0.002\n")),
    Case("pretrain: --config not YAML", mock("--config", "{tmp}/c.yaml"),
         r"c\.yaml: not valid YAML", setup=write("c.yaml", "num-layers: [1, 2\n")),
    # data
    Case("pretrain: data prefix missing", on_data("--data-path", "{tmp}/nothing"),
         r"nothing\.bin and .*nothing\.idx not found \(build it with tools/preprocess_data\.py\)"),
    Case("pretrain: --mock-data with --data-path", mock("--data-path", "{data}"),
         r"--mock-data cannot be combined with --data-path: give one data source"),
    Case("pretrain: --data-path whose .idx is missing", on_data("--data-path", "{tmp}/half"),
         r"half\.idx not found \(build it with tools/preprocess_data\.py\)",
         setup=write("half.bin", b"\x00" * 64)),
    # NullTokenizer --vocab-size 1000: ids 0..999 (999 is its end-of-document id)
    Case("pretrain: token ids beyond the vocabulary",
         on_data("--data-path", "0.5", "{data}", "0.5", "{tmp}/big", "--split", "98,1,1"),
         r"big'?: token id 1000 \(token 685 of .*big\.bin\) is outside the vocabulary of 1000 "
         r"ids", setup=ids_up_to(1000)),
    # the autoregressive baseline: its own flags, then the shared training checks
    Case("ar baseline: --ar-eval-output without --ar-eval-data",
         ar("--ar-eval-output", "{tmp}/ar.json"), r"--ar-eval-output needs --ar-eval-data"),
    Case("ar baseline: unknown PTB split", ar("--ar-eval-data", "ptb-dev"),
         r"--ar-eval-data: unknown PTB split 'dev'"),
    Case("ar baseline: evaluation data missing", ar("--ar-eval-data", "{tmp}/none.txt"),
         r"--ar-eval-data: evaluation data not found: .*none\.txt"),
    Case("ar baseline: --ar-eval-batch-size 0",
         ar("--ar-eval-data", "ptb-test", "--ar-eval-batch-size", "0"),
         r"--ar-eval-batch-size must be positive, got 0"),
    Case("ar baseline: --ar-eval-output is a directory",
         ar("--ar-eval-data", "ptb-test", "--ar-eval-output", "{tmp}"), r"--ar-eval-output: "),
    Case("ar baseline: a shared training check", ar("--lr", "-1"),
         r"--lr must not be negative, got -1\.0"),
]  # fmt: skip


# Resuming the shared ``{trained}`` checkpoint (BASE, 2 iterations) with other settings.
def resume(*args: str) -> tuple[str, ...]:
    return mock("--load", "{trained}", *args)


SETTINGS = r"iter_0000002 was saved with other model settings than this run's: "
CASES += [
    Case("pretrain --load: a longer --train-iters",
         resume(),  # BASE trains 3 iterations, the checkpoint 2
         r"learning-rate schedule differs from the checkpoint's: total number of iterations .*"
         r"pass --override-opt_param-scheduler .* or --use-checkpoint-opt_param-scheduler"),
    Case("pretrain --load: another --hidden-size",
         resume("--hidden-size", "128"),
         SETTINGS + r"--hidden-size 64 \(this run: 128\)"),
    Case("pretrain --load: another --sedd-graph",
         resume("--sedd-graph", "uniform", "--override-opt_param-scheduler"),
         SETTINGS + r".*--sedd-graph absorb \(this run: uniform\); --sedd-noise loglinear "
         r"\(this run: geometric\)"),
    Case("pretrain --load: another --vocab-size",
         resume("--vocab-size", "900"),
         SETTINGS + r"--vocab-size 1000 \(this run: 900\)"),
    Case("pretrain --load: another --sedd-time-conditioning",
         resume("--sedd-time-conditioning", "none"),
         SETTINGS + r"--sedd-time-conditioning sigma \(this run: none\)"),
]  # fmt: skip
