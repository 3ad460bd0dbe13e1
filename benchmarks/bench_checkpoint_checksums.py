"""Cost of the checkpoint checksum manifest against the save it follows, in one process.

Writes a SEDD-medium-sized float32 state (about 350M parameters, 1.4 GB; ``--params``) in two
ways this project saves checkpoints -- a torch_dist directory (``torch.distributed.checkpoint``,
the format of pretrain_sedd.py and import) and ``model.safetensors`` (save_pretrained / export)
-- then hashes the result with ``sedd_megatron.checksums.write_manifest`` (and times
``verify_directory``), and prints each time and the ratio hash / save. The target is a ratio of
at most 0.05. Both write to the page cache and hash from it (the files were just written), as a
save followed by its manifest does; on a slower file system the save takes longer and the
ratio drops.

    python benchmarks/bench_checkpoint_checksums.py [--params 350e6] [--dir /tmp] [--reps 2]
"""

import argparse
import shutil
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


def save_torch_dist(state, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder), thread_count=2))


def save_safetensors(state, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=float, default=350e6, help="float32 parameters")
    parser.add_argument("--dir", default=None, help="where to write (default: the temp dir)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions (the fastest counts)")
    args = parser.parse_args(argv)
    state = medium_state(int(args.params))
    size = sum(t.numel() * t.element_size() for t in state.values())
    print(
        f"state: {sum(t.numel() for t in state.values()) / 1e6:.0f}M float32, {size / 1e9:.2f} GB"
    )
    print(
        f"{'format':<12} {'save s':>8} {'hash s':>8} {'verify s':>9} {'hash GB/s':>10} {'ratio':>7}"
    )
    worst = 0.0
    for name, save in (("torch_dist", save_torch_dist), ("safetensors", save_safetensors)):
        best = None
        for _ in range(args.reps):
            root = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=args.dir))
            try:
                folder = root / "ckpt"
                t_save = timed(lambda: save(state, folder))  # noqa: B023
                t_hash = timed(lambda: checksums.write_manifest(folder))  # noqa: B023
                checksums._VERIFIED.clear()  # time a real check, not the per-process cache
                t_verify = timed(lambda: checksums.verify_directory(folder))  # noqa: B023
            finally:
                shutil.rmtree(root, ignore_errors=True)
            row = (t_save, t_hash, t_verify)
            best = row if best is None else tuple(map(min, best, row))
        t_save, t_hash, t_verify = best
        ratio = t_hash / t_save
        worst = max(worst, ratio)
        print(
            f"{name:<12} {t_save:>8.2f} {t_hash:>8.2f} {t_verify:>9.2f} "
            f"{size / t_hash / 1e9:>10.2f} {ratio:>7.3f}"
        )
    print(f"ratio hash/save (worst): {worst:.3f} (target <= 0.05)")
    print(
        "command: python benchmarks/bench_checkpoint_checksums.py " + " ".join(argv or sys.argv[1:])
    )


if __name__ == "__main__":
    main()
