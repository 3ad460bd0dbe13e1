"""Tokenizers: GPT-2 ids on known strings, round trips, pickling, sentencepiece, Megatron flags."""

import hashlib
import pickle
from types import SimpleNamespace

import pytest

from sedd_megatron.datasets.tokenizers import (
    build_tokenizer,
    default_gpt2_files,
    megatron_tokenizer_flags,
    write_hf_gpt2_dir,
)
from sedd_megatron.errors import DataError
from tests.datasets.conftest import needs

KNOWN = {
    "Hello world": [15496, 995],
    "Hello world! The quick brown fox.": [15496, 995, 0, 383, 2068, 7586, 21831, 13],
    " it's 1234": [340, 338, 1105, 2682],
    "tabs\t\tand\r\nCRLF  ": [8658, 82, 197, 197, 392, 201, 198, 34, 7836, 37, 220, 220],
    "Ünïcödé ½ ² ٣": [127, 250, 77, 26884, 66, 9101, 67, 2634, 25208, 1587, 110, 18923, 96],
    "emoji 😀👍🏽": [368, 31370, 30325, 222, 41840, 235, 8582, 237, 121],
}


def test_default_files_are_the_official_gpt2_files():
    vocab, merges = default_gpt2_files()
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()
    assert digest(vocab).startswith("196139668be6") and digest(vocab).endswith("636783")
    assert digest(merges).startswith("1ce1664773c5") and digest(merges).endswith("26adc5")


@pytest.mark.parametrize("text", list(KNOWN))
def test_gpt2_known_ids_and_round_trip(gpt2, text):
    assert gpt2.encode(text) == KNOWN[text]
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_vocab_eos_and_special_text(gpt2):
    assert (gpt2.vocab_size, gpt2.eos_id, gpt2.eod) == (50257, 50256, 50256)
    assert gpt2.decode([50256]) == "<|endoftext|>"
    assert 50256 not in gpt2.encode("<|endoftext|>")  # literal text never fakes a boundary


def test_gpt2_explicit_files_and_pickle(gpt2):
    vocab, merges = default_gpt2_files()
    tok = build_tokenizer("gpt2", vocab_file=vocab, merges_file=merges)
    clone = pickle.loads(pickle.dumps(tok))
    assert len(pickle.dumps(tok)) < 1000  # pickles as its build arguments
    assert clone.encode("Hello world") == [15496, 995]
    assert clone.unique_identifiers == gpt2.unique_identifiers
    assert "sha256=" in clone.unique_identifiers["vocab_file"]


def test_bad_tokenizer_settings_are_clear(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_tokenizer("gpt2", vocab_file=str(tmp_path / "x.json"), merges_file="y.bpe")
    with pytest.raises(DataError, match="both"):
        build_tokenizer("gpt2", vocab_file="x.json")
    with pytest.raises(DataError, match="unknown tokenizer kind"):
        build_tokenizer("bpe")


def test_sentencepiece_model(tmp_path):
    import sentencepiece

    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"the cat number {i} sat on the mat" for i in range(200)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=40, num_threads=1,
        model_type="bpe", minloglevel=2,
    )  # fmt: skip
    tok = build_tokenizer("sentencepiece", model_file=str(tmp_path / "sp.model"))
    assert tok.vocab_size == 40 and tok.eos_id == 2
    assert tok.decode(tok.encode("the cat sat")) == "the cat sat"
    assert pickle.loads(pickle.dumps(tok)).encode("mat") == tok.encode("mat")


def test_huggingface_kind_without_packages_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name in ("tokenizers", "transformers") else real(name, *a),
    )  # fmt: skip
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(DataError, match="pip install tokenizers"):
        build_tokenizer("huggingface", path=str(tmp_path))


def test_megatron_null_tokenizer_flags_match_gpt2(gpt2):
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer as mbuild

    flags = megatron_tokenizer_flags(gpt2)
    assert flags == ["--tokenizer-type", "NullTokenizer", "--vocab-size", "50257"]
    args = SimpleNamespace(tokenizer_type=flags[1], vocab_size=int(flags[3]), pad_vocab_size=False)
    mtok = mbuild(args)
    assert (mtok.vocab_size, mtok.eod) == (gpt2.vocab_size, gpt2.eos_id)


@needs("transformers")
def test_megatron_huggingface_flags_give_same_ids(gpt2, tmp_path):
    from megatron.core.tokenizers import MegatronTokenizer

    flags = megatron_tokenizer_flags(gpt2, hf_dir=str(tmp_path / "gpt2"))
    assert flags[:2] == ["--tokenizer-type", "HuggingFaceTokenizer"]
    mtok = MegatronTokenizer.from_pretrained(flags[3], metadata_path={"library": "huggingface"})
    for text, ids in KNOWN.items():
        assert mtok.tokenize(text) == ids
    assert (mtok.vocab_size, mtok.eod) == (50257, 50256)
    ours = build_tokenizer("huggingface", path=flags[3])
    assert (ours.vocab_size, ours.eos_id) == (50257, 50256)
    assert all(ours.encode(text) == ids for text, ids in KNOWN.items())


def test_write_hf_gpt2_dir(tmp_path):
    out = write_hf_gpt2_dir(str(tmp_path / "hf"))
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "merges.txt", "tokenizer_config.json", "vocab.json",
    ]  # fmt: skip
    assert out == str(tmp_path / "hf")
