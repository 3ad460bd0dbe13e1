#!/usr/bin/env python
"""Speed of the lm-eval model ``sedd`` on this machine: model evaluations per second of the
conditional bound, and the wall time of one 4-choice multiple-choice example at the default
settings (num_t_samples=100, importance design, 2 tail samples, is_greedy).

  python benchmarks/bench_lm_eval.py --model tests/data/conformance/tiny_absorb
"""

import argparse
import sys
import time

import torch

from sedd_megatron.evaluation.settings import default_tail_samples
from sedd_megatron.lm_harness import SEDDLM


class Request:
    def __init__(self, *args):
        self.args = args


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tests/data/conformance/tiny_absorb")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--context", type=int, default=20, help="context tokens")
    p.add_argument("--continuation", type=int, default=6, help="tokens per choice")
    p.add_argument("--examples", type=int, default=4)
    p.add_argument("--num-t-samples", type=int, default=100, help="the model's default: 100")
    args = p.parse_args()
    lm = SEDDLM(pretrained=args.model, batch_size=args.batch_size, num_t_samples=args.num_t_samples)
    gen = torch.Generator().manual_seed(0)
    vocab = lm.model.num_tokens

    def ids(n):
        return " ".join(str(int(i)) for i in torch.randint(0, vocab, (n,), generator=gen))

    if vocab >= 50257:
        raise SystemExit("use a token-id model (tokenizer=ids) for this benchmark")
    examples = [
        [Request(ids(args.context), " " + ids(args.continuation)) for _ in range(4)]
        for _ in range(args.examples)
    ]
    lm.loglikelihood(examples[0])  # warm-up
    start = time.perf_counter()
    for ex in examples:
        lm.loglikelihood(ex)
    seconds = (time.perf_counter() - start) / len(examples)
    tail = default_tail_samples(lm.num_t_samples) if lm.tail_samples is None else lm.tail_samples
    evals = 4 * (lm.num_t_samples + tail + 1)
    print(
        f"one 4-choice example: {seconds:.3f} s, {evals} model evaluations "
        f"({evals / seconds:.0f} evaluations/s; sequence {args.context + args.continuation}, "
        f"batch {args.batch_size}, threads {torch.get_num_threads()})"
    )
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
