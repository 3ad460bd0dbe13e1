"""Peak memory of SEDD's vocab-parallel score entropy vs gathering the vocabulary first (TP=2).

What is measured, per tensor-parallel rank, for forward + backward of the per-sequence loss
sum_l dsigma * SE_l starting from this rank's log-score shard [b, s, V_pad / tp] (a leaf that
requires grad, i.e. what the output layer hands to the loss):

- ``vocab-parallel``: ``vocab_parallel_score_entropy`` (per-shard statistics + one all-reduce
  of [b, s] tensors), as ``SEDDModel(x_t, sigma, x0=x0)`` computes it;
- ``gather``: all-gather the shards to the full vocabulary (Megatron's differentiable
  ``gather_from_tensor_model_parallel_region``), then the full-vocabulary
  ``graph.score_entropy``.

How: on CPU, a ``TorchDispatchMode`` sees every tensor that an aten op returns (forward and
autograd's backward alike), counts the bytes of each new storage once (views share it) and
subtracts them when the storage is freed (a weakref finalizer). The peak of these live bytes is
exact and deterministic: it is what the allocations of this computation hold at its worst
moment, independent of the allocator's caching and of the machine's load. Storages that existed
before (the input shard, indices) are not counted; the shard's gradient is. On CUDA the same
quantity is ``torch.cuda.max_memory_allocated()`` minus the allocated bytes at the start.

Runs under torchrun with 2 processes (the script relaunches itself when started directly), on
CUDA when there are 2 GPUs, else on CPU:

    python benchmarks/bench_vocab_parallel_loss.py --batch 4 --seq-len 256
"""

import argparse
import os
import shlex
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from sedd_megatron.diffusion import GRAPHS, get_graph, get_noise, sample_t
from sedd_megatron.runtime import world


class LiveStorageBytes(TorchDispatchMode):
    """Tracks the bytes of storages created by aten ops while active; ``peak`` is their max."""

    def __init__(self, ignore=()):
        super().__init__()
        self.seen = WeakIdKeyDictionary()
        self.live = 0
        self.peak = 0
        for tensor in ignore:  # pre-existing storages: views of them must not count
            self.seen[tensor.untyped_storage()] = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if storage in self.seen:
                continue
            self.seen[storage] = storage.nbytes()
            self.live += storage.nbytes()
            weakref.finalize(storage, self._release, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50257, help="data tokens (GPT-2: 50257)")
    parser.add_argument("--graphs", nargs="+", choices=tuple(GRAPHS), default=list(GRAPHS))
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument(
        "--device",
        choices=("auto", "cpu"),
        default="auto",
        help="auto: CUDA when there are --tp GPUs, else CPU",
    )
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv)


def relaunch_under_torchrun(args) -> None:
    if args.device == "cpu" or torch.cuda.device_count() < args.tp:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the workers run on CPU (gloo)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.tp}",
        os.path.abspath(__file__),
        *sys.argv[1:],
    ]
    os.execv(sys.executable, cmd)


def make_inputs(args, graph, vocab_pad: int, device):
    """Identical on every rank: x0, x_t, sigma, dsigma, and the full padded log-score."""
    gen = torch.Generator().manual_seed(args.seed)
    noise = get_noise(graph.default_noise)
    x0 = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=gen)
    sigma, dsigma = noise(sample_t(args.batch, generator=gen))
    x_t = graph.sample_transition(x0, sigma[:, None], generator=gen)
    full = torch.randn(args.batch, args.seq_len, vocab_pad, generator=gen) - 5.0
    return [t.to(device) for t in (x0, x_t, sigma, dsigma, full)]


def run_variant(name, graph, shard, x0, x_t, sigma, dsigma, offset, rows, group):
    """Forward + backward of one variant from the leaf ``shard``; returns the loss."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from sedd_megatron.models.sedd.vocab_parallel_score_entropy import (  # lazy: imports megatron
        vocab_parallel_score_entropy,
    )

    if name == "vocab-parallel":  # as SEDDModel: the whole shard, padding columns skipped
        per_token = vocab_parallel_score_entropy(
            graph.name,
            graph.num_tokens,
            shard,
            sigma,
            x_t,
            x0,
            vocab_offset=offset,
            num_valid=max(0, min(shard.shape[-1], rows - offset)),
            tp_group=group,
        )
    else:
        full = gather_from_tensor_model_parallel_region(shard, group=group)[..., :rows]
        per_token = graph.score_entropy(full, sigma[:, None], x_t, x0)
    loss = (dsigma[:, None] * per_token).sum(-1).mean()
    loss.backward()
    return loss.detach()


def measure(name, graph, inputs, offset, rows, group, on_cuda):
    """Peak bytes above the start of one variant's forward + backward on this rank."""
    x0, x_t, sigma, dsigma, shard = inputs
    shard.grad = None
    if on_cuda:
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = run_variant(name, graph, shard, x0, x_t, sigma, dsigma, offset, rows, group)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start, loss
    with LiveStorageBytes(ignore=inputs) as tracker:
        loss = run_variant(name, graph, shard, x0, x_t, sigma, dsigma, offset, rows, group)
    return tracker.peak, loss


def main(argv=None):
    args = parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        relaunch_under_torchrun(args)
    torch.set_num_threads(1)
    from megatron.core import parallel_state

    from sedd_megatron.models.sedd import padded_vocab_size  # lazy: imports megatron

    with world(tp=args.tp, seed=args.seed):
        on_cuda = torch.cuda.is_available()
        device = (
            torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
        )
        group = parallel_state.get_tensor_model_parallel_group()
        rank, tp = group.rank(), group.size()
        results = []
        for graph_name in args.graphs:
            graph = get_graph(graph_name, args.vocab)
            vocab_pad = padded_vocab_size(graph.dim, tp)
            per_rank = vocab_pad // tp
            offset = rank * per_rank
            x0, x_t, sigma, dsigma, full = make_inputs(args, graph, vocab_pad, device)
            shard = full[..., offset : offset + per_rank].clone().requires_grad_()
            del full
            inputs = (x0, x_t, sigma, dsigma, shard)
            row = {"graph": graph_name, "shard_mb": shard.numel() * shard.element_size() / 2**20}
            for name in ("vocab-parallel", "gather"):
                peak, loss = measure(name, graph, inputs, offset, graph.dim, group, on_cuda)
                row[name] = peak / 2**20
                row[f"loss_{name}"] = loss.item()
            results.append(row)

        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, results)
        if torch.distributed.get_rank() == 0:
            how = "torch.cuda.max_memory_allocated" if on_cuda else "live storage bytes (dispatch)"
            print(
                f"\nbench_vocab_parallel_loss: TP={tp} batch={args.batch} seq_len={args.seq_len} "
                f"vocab={args.vocab} fp32 forward+backward, peak memory above start via {how}"
            )
            print(
                f"{'graph':<8} {'rank':>4} {'shard MB':>9} {'vocab-parallel MB':>18} "
                f"{'gather MB':>10} {'gather/vp':>10} {'loss rel diff':>14}"
            )
            for i, graph_name in enumerate(args.graphs):
                for r, rows in enumerate(gathered):
                    row = rows[i]
                    ref = row["loss_gather"]
                    diff = abs(row["loss_vocab-parallel"] - ref) / max(abs(ref), 1e-30)
                    print(
                        f"{graph_name:<8} {r:>4} {row['shard_mb']:>9.1f} "
                        f"{row['vocab-parallel']:>18.1f} {row['gather']:>10.1f} "
                        f"{row['gather'] / row['vocab-parallel']:>10.2f} {diff:>14.2e}"
                    )
            script = os.path.relpath(os.path.abspath(__file__))
            print("command: " + shlex.join(["python", script, *sys.argv[1:]]))


if __name__ == "__main__":
    main()
