"""Pipeline splits that PP does not divide evenly (Megatron's uneven pipeline), and the layout
checks the tools run before they spawn processes."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from sedd_megatron.checkpoint.layouts import (
    check_config_layout,
    check_layout,
    check_source_layout,
    pipeline_split,
)
from sedd_megatron.errors import ConfigError
from sedd_megatron.plain import SEDD
from sedd_megatron.plain.config import SEDDConfig
from tests.checkpoint.conftest import WORKERS
from tests.conftest import CONFORMANCE_DIR
from tests.launch import parse_result, run_torchrun

TINY = CONFORMANCE_DIR / "tiny_absorb"


def split_is_valid_for_megatron(stages, n_blocks, pp):
    """Megatron's uneven pipeline: every middle stage holds the same number of blocks."""
    middle = stages[1:-1]
    return (
        len(stages) == pp and sum(stages) == n_blocks and min(stages) >= 1 and len(set(middle)) <= 1
    )


def test_default_split_is_a_valid_megatron_split_and_as_even_as_possible():
    for n_blocks in range(1, 26):
        for pp in range(1, 9):
            if pp > n_blocks:
                with pytest.raises(ValueError):
                    pipeline_split(n_blocks, pp)
                continue
            stages = pipeline_split(n_blocks, pp)
            assert split_is_valid_for_megatron(stages, n_blocks, pp), (n_blocks, pp, stages)
            if n_blocks % pp == 0:
                assert set(stages) == {n_blocks // pp}
            # brute force over every split Megatron accepts: none has a smaller largest stage
            valid = [(n_blocks,)] if pp == 1 else []
            for first in range(1, n_blocks + 1):
                for middle in range(1, n_blocks + 1):
                    last = n_blocks - first - (pp - 2) * middle
                    split = (first, *([middle] * (pp - 2)), last)
                    if pp > 1 and split_is_valid_for_megatron(split, n_blocks, pp):
                        valid.append(split)
            assert max(stages) == min(max(c) for c in valid), (n_blocks, pp, stages)


def test_documented_examples():
    assert pipeline_split(3, 2) == (2, 1)
    assert pipeline_split(7, 4) == (2, 2, 2, 1)
    assert pipeline_split(10, 4) == (2, 3, 3, 2)


def test_uneven_layout_names_megatron_flags():
    config = dataclasses.replace(SEDDConfig.from_json(TINY / "config.json"), n_blocks=3)
    layout = check_config_layout(config, 1, 2)
    assert layout.stages == (2, 1)
    assert layout.pretrain_flags() == [
        "--decoder-first-pipeline-num-layers", "2", "--decoder-last-pipeline-num-layers", "1",
    ]  # fmt: skip
    assert layout.transformer_config_kwargs() == {
        "num_layers_in_first_pipeline_stage": 2,
        "num_layers_in_last_pipeline_stage": 1,
    }
    even = check_config_layout(config, 1, 3)
    assert even.pretrain_flags() == [] and even.transformer_config_kwargs() == {}


BAD_LAYOUTS = {
    "heads": (dict(tp=3, pp=1), r"n_heads 4 is not divisible by TP=3"),
    "blocks": (dict(tp=1, pp=3), r"2 blocks cannot fill PP=3"),
    "vocabulary": (dict(tp=16, pp=1), r"leave the last TP rank only padding"),
    "world size": (dict(tp=2, pp=1, world_size=3), r"needs a multiple of 2 processes, got 3"),
    "zero": (dict(tp=0, pp=1), r"must be positive"),
}


@pytest.mark.parametrize("case", BAD_LAYOUTS)
def test_bad_layouts_are_one_config_error(case):
    kwargs, message = BAD_LAYOUTS[case]
    with pytest.raises(ConfigError, match=message):
        check_source_layout(TINY, **kwargs)


def test_hidden_size_and_padding_arithmetic():
    shape = dict(n_blocks=4, n_heads=4, vocab_rows=None)
    with pytest.raises(ConfigError, match="hidden_size 66 is not divisible by TP=4"):
        check_layout(hidden_size=66, tp=4, pp=1, **shape)
    # 300 rows pad to 512 at TP=2 (256 per rank: the last holds rows 256..299) -> fits;
    # 200 rows pad to 256 at TP=2 (128 per rank: the last holds rows 128..199) -> fits;
    # 100 rows pad to 256 at TP=2 (the last rank holds only padding) -> refused.
    check_layout(hidden_size=64, tp=2, pp=1, n_blocks=4, n_heads=4, vocab_rows=300)
    check_layout(hidden_size=64, tp=2, pp=1, n_blocks=4, n_heads=4, vocab_rows=200)
    with pytest.raises(ConfigError, match="100 vocabulary rows, padded to 256"):
        check_layout(hidden_size=64, tp=2, pp=1, n_blocks=4, n_heads=4, vocab_rows=100)
    check_layout(hidden_size=64, tp=2, pp=1, n_blocks=4, n_heads=4, vocab_rows=100, vocab_divisor=1)


def three_block_model(directory):
    """tiny_absorb's config with 3 blocks and random weights (nothing zero), safetensors only."""
    config = dataclasses.replace(SEDDConfig.from_json(TINY / "config.json"), n_blocks=3)
    torch.manual_seed(3)
    model = SEDD(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * (0.3 if "norm" not in name else 0.1) + (
                1.0 if "norm" in name else 0.0))  # fmt: skip
    model.save_pretrained(directory, safetensors=True)
    return directory


@pytest.mark.distributed
def test_three_blocks_at_pp2_round_trip_and_log_scores(tmp_path):
    source = three_block_model(tmp_path / "three_blocks")
    done = run_torchrun(WORKERS / "uneven_pipeline.py", 2,
                        [str(source), str(tmp_path / "out"), "--pp", "2"], 240)  # fmt: skip
    result = parse_result(done.stdout)
    # the default split: 2 + 1 blocks, global layer numbers 1, 2 | 3
    assert result["megatron_stage_layers"] == [[1, 2], [3]]
    assert result["plain_stage_layers"] == [[1, 2], [3]]
    assert result["saved_split"] == [2, 1] and result["saved_pp"] == 2
    assert result["provider_split"] == [2, 1]  # pretrain_sedd.py --load builds the same stages
    # log-scores at PP=2 (from the imported checkpoint and from the plain directory) equal the
    # plain twin's up to float32 rounding
    for name in ("megatron", "plain"):
        assert result[f"{name}_max_abs"] <= 1e-5 * result[f"{name}_scale"], name
    # exported back: the original file bit for bit, keys in order, the same config.json
    original = load_file(source / "model.safetensors")
    exported = load_file(f"{result['plain_out']}/model.safetensors")
    assert list(exported) == list(original)
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key
    assert json.loads((source / "config.json").read_text()) == json.loads(
        open(f"{result['plain_out']}/config.json").read()
    )
