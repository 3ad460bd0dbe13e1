"""megatron.training.pretrain() on CPU: a tiny GPT (mock data, distributed optimizer) trains,
evaluates and saves torch_dist checkpoints; a second run resumes from the mid-run checkpoint
and reproduces the uninterrupted run's training losses exactly.

Dropout is on: on CPU the "CUDA" RNG is the CPU generator, which the checkpoint saves and
restores; the data loaders draw their seeds from a generator of their own (as on a GPU, where
they come from the CPU generator), so the resumed run draws the same masks.
"""

from pathlib import Path

import pytest

from tests.launch import free_port, parse_result, run_python

WORKER = Path(__file__).parent / "workers" / "pretrain_gpt_cpu.py"
ITERS = 4
TINY_GPT = (
    "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 "
    "--max-position-embeddings 16 --hidden-dropout 0.1 --attention-dropout 0.1 "
    "--transformer-impl local --no-persist-layer-norm --no-gradient-accumulation-fusion "
    "--micro-batch-size 2 --global-batch-size 2 --lr 1e-3 --seed 1234 "
    f"--train-iters {ITERS} --eval-iters 1 --eval-interval {ITERS} --log-interval 1 "
    "--mock-data --tokenizer-type NullTokenizer --vocab-size 128 "
    "--use-distributed-optimizer --ckpt-format torch_dist --distributed-backend gloo"
).split()


def pretrain(*extra: str) -> dict:
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    return parse_result(run_python(WORKER, [*TINY_GPT, *extra], timeout=180, env=env).stdout)


@pytest.mark.distributed
def test_pretrain_trains_saves_and_resumes_exactly(tmp_path):
    ckpt = tmp_path / "ckpt"
    full = pretrain("--save", str(ckpt), "--save-interval", str(ITERS // 2))
    assert len(full["train_losses"]) == ITERS
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
    assert (ckpt / f"iter_{ITERS // 2:07d}").is_dir() and (ckpt / f"iter_{ITERS:07d}").is_dir()

    resumed = pretrain("--load", str(ckpt), "--ckpt-step", str(ITERS // 2))
    assert resumed["train_losses"] == full["train_losses"][ITERS // 2 :]
