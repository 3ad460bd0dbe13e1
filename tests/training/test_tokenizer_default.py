"""pretrain_sedd.py's default tokenizer needs no network: NullTokenizer with GPT-2's vocabulary."""

from types import SimpleNamespace

import pytest

from sedd_megatron.errors import ConfigError
from sedd_megatron.training.arguments import REFERENCE_DEFAULTS, default_tokenizer


def _args(**kw):
    base = dict(tokenizer_type=REFERENCE_DEFAULTS["tokenizer_type"], vocab_size=None)
    return SimpleNamespace(**{**base, "vocab_file": None, "merge_file": None, **kw})


def test_default_is_null_tokenizer_with_the_gpt2_vocabulary():
    args = _args()
    default_tokenizer(args)
    assert (args.tokenizer_type, args.vocab_size) == ("NullTokenizer", 50257)


def test_given_vocabulary_size_is_kept():
    args = _args(vocab_size=1000)
    default_tokenizer(args)
    assert args.vocab_size == 1000


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(tokenizer_type="GPT2BPETokenizer", vocab_file="v.json"), "both --vocab-file"),
        (dict(vocab_size=1), "--vocab-size must be at least 2"),
    ],
)
def test_bad_tokenizer_settings(kw, message):
    with pytest.raises(ConfigError, match=message):
        default_tokenizer(_args(**kw))
