"""Cost of the checkpoint checksum manifest: the time it adds to a save, in one process.

Writes a SEDD-medium-sized float32 state (about 350M parameters, 1.4 GB; ``--params``) the two
ways this project saves checkpoints, three times per rep (each first in turn):

- ``plain``: the save alone -- Megatron-Core's torch_dist ``dist_checkpointing.save`` (the
  format of pretrain_sedd.py and import; one gloo process on the CPU, fsynced shards) or
  ``safetensors.torch.save_file`` (save_pretrained / export before the manifest);
- ``manifest``: the save as the project does it now -- shards through
  ``checksums.HashingWriter`` (``hash_megatron_shard_writes``; ``plain.save_safetensors``)
  -- then ``checksums.write_manifest``, which re-reads only files not hashed while written;
- ``re-read``: the plain save, then ``write_manifest`` hashing every file again from the page
  cache (the cost before hashing while writing; what a caller that does not hash pays).

It prints the median seconds of each and the time added over the plain save, as a ratio: per
rep (one warm-up rep first, not counted), then the median over ``--reps``; the target is at
most 0.05. Timings on a shared machine are noisy: use reps, ``--verbose`` shows them all.

    python benchmarks/bench_checkpoint_checksums.py [--params 350e6] [--dir /tmp] [--reps 5]
        [--verbose]
"""

import argparse
import builtins
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sedd_megatron import checksums  # noqa: E402


def medium_state(params: int) -> dict[str, torch.Tensor]:
    """24 blocks of 12 * 1024^2-ish weights plus an embedding, scaled to ``params`` floats."""
    hidden = 1024
    per_block = 12 * hidden * hidden
    blocks = max(1, int(params * 0.86) // per_block)
    state = {}
    for i in range(blocks):
        state[f"blocks.{i}.attn_qkv.weight"] = torch.randn(3 * hidden, hidden)
        state[f"blocks.{i}.attn_out.weight"] = torch.randn(hidden, hidden)
        state[f"blocks.{i}.mlp.0.weight"] = torch.randn(4 * hidden, hidden)
        state[f"blocks.{i}.mlp.2.weight"] = torch.randn(hidden, 4 * hidden)
    rest = max(hidden, params - blocks * per_block)
    state["vocab_embed.embedding"] = torch.randn(rest // hidden, hidden)
    return state


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def torch_dist_saver(state):
    """(save, set hashing on/off) for Megatron-Core's torch_dist format."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    sharded = {k: ShardedTensor.from_rank_offsets(k, v) for k, v in state.items()}

    def save(folder: Path, hashing: bool) -> None:
        filesystem_async.open = checksums.open_hashed if hashing else builtins.open
        folder.mkdir()
        dist_checkpointing.save(sharded, str(folder))

    return save


def safetensors_saver(state):
    from safetensors.torch import save_file

    from sedd_megatron.plain.checkpoint import save_safetensors  # lazy: beside save_file

    def save(folder: Path, hashing: bool) -> None:
        folder.mkdir()
        if hashing:
            save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"})
        else:
            save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    return save


def run(save, reps: int, where: str | None) -> dict[str, list[float]]:
    """Seconds of each kind per rep (after one untimed rep that warms up every path)."""
    times = {"plain": [], "manifest": [], "re-read": []}
    kinds = list(times)
    for rep in range(-1, reps):
        for kind in kinds[rep % 3 :] + kinds[: rep % 3]:  # each goes first in turn
            root = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=where))
            try:
                folder = root / "ckpt"

                def once():
                    save(folder, kind == "manifest")  # noqa: B023
                    if kind != "plain":  # noqa: B023
                        checksums.write_manifest(folder)  # noqa: B023

                seconds = timed(once)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            if rep >= 0:
                times[kind].append(seconds)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=float, default=350e6, help="float32 parameters")
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (medians count)")
    parser.add_argument("--verbose", action="store_true", help="print every rep's times")
    args = parser.parse_args(argv)

    from sedd_megatron.runtime.distributed import init_distributed  # lazy: after --help

    init_distributed()  # one gloo process (the CPU shim where there is no CUDA)
    state = medium_state(int(args.params))
    size = sum(t.numel() * t.element_size() for t in state.values())
    print(
        f"state: {sum(t.numel() for t in state.values()) / 1e6:.0f}M float32, {size / 1e9:.2f} GB"
        f"; {args.reps} reps, medians in seconds"
    )
    print(f"{'format':<12} {'plain':>7} {'manifest':>9} {'re-read':>8} {'added':>7} {'re-read':>8}")
    worst = -1.0
    for name, saver in (("torch_dist", torch_dist_saver), ("safetensors", safetensors_saver)):
        times = run(saver(state), args.reps, args.dir)
        plain, hashed, reread = (statistics.median(times[k]) for k in times)
        # per rep: the added time over that rep's plain save; the median of those
        plains = times["plain"]
        added = statistics.median(m / p - 1 for p, m in zip(plains, times["manifest"], strict=True))
        again = statistics.median(r / p - 1 for p, r in zip(plains, times["re-read"], strict=True))
        worst = max(worst, added)
        print(f"{name:<12} {plain:>7.2f} {hashed:>9.2f} {reread:>8.2f} {added:>7.3f} {again:>8.3f}")
        if args.verbose:
            for kind, values in times.items():
                print(f"  {kind:<9} " + " ".join(f"{v:.2f}" for v in values))
    print(f"added time of the manifest / plain save (worst): {worst:.3f} (target <= 0.05)")
    print(
        "command: python benchmarks/bench_checkpoint_checksums.py " + " ".join(argv or sys.argv[1:])
    )


if __name__ == "__main__":
    main()
