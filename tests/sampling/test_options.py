"""The library's checks of sampling settings, output paths and prompt files, and the streaming
record writer (what tools/generate_sedd.py builds on)."""

import json
import os
import stat

import pytest

from sedd_megatron.errors import ConfigError, PromptError
from sedd_megatron.sampling import (
    Prompt,
    RecordWriter,
    SamplingOptions,
    check_output,
    check_prompts,
    check_run,
    generate,
    ids_encoder,
    iter_records,
    open_model,
    read_prompts,
    write_jsonl,
)
from tests.conftest import CONFORMANCE_DIR


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=2.0), "eps must lie strictly between 0 and 1"),
        (dict(eps=1.0), "eps must lie strictly between 0 and 1"),
        (dict(eps=0.0), "eps must lie strictly between 0 and 1"),
        (dict(eps=-1e-5), "eps must lie strictly between 0 and 1"),
        (dict(eps=float("nan")), "eps must lie strictly between 0 and 1"),
        (dict(eps="0.1"), "eps must be a number"),
        (dict(steps=0), "steps must be positive, got 0"),
        (dict(steps=-4), "steps must be positive, got -4"),
        (dict(steps=2.5), "steps must be an integer"),
        (dict(steps=True), "steps must be an integer"),
        (dict(predictor="heun"), "unknown predictor 'heun'"),
        (dict(denoise=1), "denoise must be True or False"),
    ],
)
def test_sampling_options_reject_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplingOptions(**kwargs)


def test_sampling_options_accept_the_edges():
    options = SamplingOptions(predictor="none", steps=1, eps=0.999999)
    assert options.to_dict() == dict(
        predictor="none", steps=1, eps=0.999999, denoise=True, fp32_sampling=False
    )
    assert SamplingOptions(eps=1e-12).eps == 1e-12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_samples=0, batch_size=1), "num_samples must be positive, got 0"),
        (dict(num_samples=1, batch_size=0), "batch_size must be positive, got 0"),
        (dict(num_samples=1, batch_size=1, seed=-1), "seed must be non-negative"),
        (dict(num_samples=1, batch_size=1, seed=2**63), "seed must be below 2\\*\\*63"),
        (dict(num_samples=1, batch_size=1, seq_length=0), "seq_length must be positive"),
    ],
)
def test_check_run(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        check_run(**kwargs)


@pytest.fixture(scope="module")
def tiny():
    return open_model(CONFORMANCE_DIR / "tiny_absorb", "plain", device="cpu")


def test_library_generation_checks_before_sampling(tiny):
    with pytest.raises(ConfigError, match="num_samples must be positive"):
        generate(tiny, [Prompt()], num_samples=0)
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        iter_records(tiny, [Prompt()], batch_size=0)  # raised by the call, not on iteration
    with pytest.raises(PromptError, match="token id 1000, outside the model's vocabulary"):
        iter_records(tiny, [Prompt(prefix="1 1000")])


def test_iter_records_streams_what_generate_returns(tiny):
    prompts = [Prompt(prefix="5 6"), Prompt(suffix="7")]
    kwargs = dict(num_samples=3, batch_size=4, seed=2, options=SamplingOptions(steps=2))
    rounds = list(iter_records(tiny, prompts, **kwargs))
    assert [len(r) for r in rounds] == [4, 2]  # one list per batch (one replica), in order
    flat = [record for part in rounds for record in part]
    assert [r["sample_index"] for r in flat] == list(range(6))
    assert flat == generate(tiny, prompts, **{**kwargs, "batch_size": 1})


def test_check_prompts_before_a_model(tmp_path):
    check_prompts([Prompt(prefix="1 2 3", suffix="4")], ids_encoder)  # no length: fits
    with pytest.raises(PromptError, match="needs 4 positions .* the sequence has 3"):
        check_prompts([Prompt(prefix="1 2 3", suffix="4")], ids_encoder, 3)
    with pytest.raises(PromptError, match="prompts are token ids, got 'hello'"):
        check_prompts([Prompt(template="hello [MASK:2]")], ids_encoder)
    with pytest.raises(PromptError, match="token id 12, outside the model's vocabulary of 10"):
        check_prompts([Prompt(suffix="12")], ids_encoder, None, 10)


def test_read_prompts_errors(tmp_path):
    with pytest.raises(PromptError, match="prompts file .*missing.jsonl does not exist"):
        read_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(PromptError, match="is a directory"):
        read_prompts(tmp_path)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prefix": "caf\xe9"}\n')
    with pytest.raises(PromptError, match="latin1.jsonl: not UTF-8 text"):
        read_prompts(latin1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prefix": "1"}\n{"prefix": \n')
    with pytest.raises(PromptError, match="bad.jsonl:2: not valid JSON"):
        read_prompts(bad)


def test_check_output(tmp_path):
    assert check_output(None) is None and check_output("-") is None
    assert check_output(tmp_path / "out.jsonl") == tmp_path / "out.jsonl"
    with pytest.raises(ConfigError, match="is a directory: name the JSONL file"):
        check_output(tmp_path)
    (tmp_path / "x.jsonl.partial").mkdir()
    with pytest.raises(ConfigError, match="x.jsonl.partial is a directory"):
        check_output(tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="directory .*/missing does not exist"):
        check_output(tmp_path / "missing" / "out.jsonl")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="/file is not a directory"):
        check_output(tmp_path / "file" / "sub" / "out.jsonl")
    with pytest.raises(ConfigError, match="the output path is empty"):
        check_output("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "x.jsonl.partial"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_output_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="locked is not writable"):
            check_output(locked / "out.jsonl")
    finally:
        locked.chmod(0o700)


RECORDS = [{"sample_index": i, "text": f"é{i}"} for i in range(5)]


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_record_writer_renames_when_complete(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    umask = os.umask(0o022)
    try:
        with RecordWriter(out) as writer:
            writer.write(RECORDS[:2])
            assert _read(tmp_path / "out.jsonl.partial") == RECORDS[:2]  # visible as it goes
            assert out.read_text() == "old\n" and writer.where.endswith("out.jsonl.partial")
            writer.write(RECORDS[2:])
    finally:
        os.umask(umask)
    assert _read(out) == RECORDS and writer.written == 5 and writer.where == str(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_record_writer_keeps_finished_records_on_interrupt(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with RecordWriter(out) as writer:
            writer.write(RECORDS[:2])
            writer.write(RECORDS[2:3])
            raise KeyboardInterrupt
    assert writer.written == 3 and writer.where == str(tmp_path / "out.jsonl.partial")
    assert _read(tmp_path / "out.jsonl.partial") == RECORDS[:3]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl.partial"]


def test_record_writer_drops_an_unfinished_write(tmp_path):
    """An interrupt inside a write (here: while flushing) keeps only the finished writes."""
    out = tmp_path / "out.jsonl"

    class FlushInterrupted:
        def __init__(self, file):
            self.file, self.armed = file, True

        def flush(self):
            if self.armed:
                self.armed = False
                raise KeyboardInterrupt
            self.file.flush()

        def __getattr__(self, name):
            return getattr(self.file, name)

    with pytest.raises(KeyboardInterrupt):
        with RecordWriter(out) as writer:
            writer.write(RECORDS[:2])
            writer._file = FlushInterrupted(writer._file)
            writer.write(RECORDS[2:])
    assert writer.written == 2
    assert _read(tmp_path / "out.jsonl.partial") == RECORDS[:2]


def test_record_writer_leaves_nothing_without_records(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(ValueError):
        with RecordWriter(out):
            raise ValueError("before the first batch")
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"] and out.read_text() == "old\n"


def test_record_writer_and_write_jsonl_to_stdout(capsys, tmp_path):
    with RecordWriter("-") as writer:
        writer.write(RECORDS[:1])
        assert capsys.readouterr().out == json.dumps(RECORDS[0], ensure_ascii=False) + "\n"
    assert writer.where == "stdout" and writer.written == 1
    write_jsonl(RECORDS[:2])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == RECORDS[:2]
    write_jsonl(RECORDS, tmp_path / "all.jsonl")
    assert _read(tmp_path / "all.jsonl") == RECORDS
    with pytest.raises(ConfigError, match="does not exist"):
        write_jsonl(RECORDS, tmp_path / "no" / "all.jsonl")


def test_steps_that_cannot_fit_in_memory_are_one_error(monkeypatch):
    """STEP_BYTES is a true lower bound (measured), and a schedule larger than the machine's
    memory is refused before anything is allocated."""
    import tracemalloc

    from sedd_megatron.datasets import checks
    from sedd_megatron.diffusion.noise import LogLinearNoise
    from sedd_megatron.sampling.options import STEP_BYTES
    from sedd_megatron.sampling.step import schedule

    tracemalloc.start()
    steps = schedule(LogLinearNoise(), 20000, "analytic")
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert held / len(steps) >= STEP_BYTES
    monkeypatch.setattr(checks, "physical_memory", lambda: 10**9)
    with pytest.raises(ConfigError, match=r"steps 10000000 would need at least 2 GB of memory"):
        SamplingOptions(steps=10**7)
    assert SamplingOptions(steps=10**6).steps == 10**6
