"""Detokenizers that undo the word-level tokenization of evaluation corpora before GPT-2 BPE.

SEDD, like GPT-2, evaluates the Mikolov Penn Treebank (lower-cased, numbers replaced by ``N``,
rare words by ``<unk>``, clitics split off) after a light *detokenizer*, so that the invertible
GPT-2 tokenizer sees text closer to what it was trained on. The SEDD reference applies it to
each PTB sentence before appending EOS.

Rules of :func:`ptb_detokenize` (``mode="sedd"``, the default; applied in this order, on plain
substrings, exactly as the SEDD/GPT-2 PTB detokenizer behaves, so that numbers are comparable
with the paper's PTB column):

1. ``" 's"`` -> ``"'s"``                (``the company 's`` -> ``the company's``)
2. ``"s ' "`` -> ``"s' "``              (plural possessive: ``investors ' money``)
3. ``" n't"`` -> ``"n't"``              (``did n't`` -> ``didn't``)
4. ``" \\n "`` -> ``"\\n"``             (line breaks inside a multi-line string)
5. ``"\\/"`` -> ``"/"``                 (PTB escapes slashes)
6. ``" N "`` -> ``" 1 "``, repeated     (the number placeholder becomes a digit; repeated so
                                         that runs like ``N N`` are all replaced)
7. ``"$ 1"`` -> ``"$1"``, ``"# 1"`` -> ``"#1"``
8. ``"<unk>"`` -> ``"?"``

``mode="extended"`` adds rules of our own (not used for paper comparisons): the other clitics
(``'re 've 'll 'm 'd``) are attached, ``N`` at the very start or end of a string becomes ``1``,
and spaces before ``, . ; : ? ! %`` and inside brackets are removed.
"""

from __future__ import annotations

import re

MODES = ("sedd", "extended", "none")

_SEDD_RULES = (
    (" 's", "'s"),
    ("s ' ", "s' "),
    (" n't", "n't"),
    (" \n ", "\n"),
    ("\\/", "/"),
)
_EXTENDED_CLITICS = re.compile(r" '(re|ve|ll|m|d)\b")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:?!%])(?=\s|$)")
_OPEN_BRACKET = re.compile(r"([(\[{]) ")
_CLOSE_BRACKET = re.compile(r" ([)\]}])")


def ptb_detokenize(text: str, mode: str = "sedd") -> str:
    """Detokenize Mikolov-PTB text (one sentence or many). See the module docstring for rules."""
    if mode not in MODES:
        raise ValueError(f"unknown detokenizer mode {mode!r} (expected one of {MODES})")
    if mode == "none":
        return text
    for old, new in _SEDD_RULES:
        text = text.replace(old, new)
    for _ in range(10):  # overlapping matches (" N N ") need several passes
        replaced = text.replace(" N ", " 1 ")
        if replaced == text:
            break
        text = replaced
    text = text.replace("$ 1", "$1").replace("# 1", "#1")
    text = text.replace("<unk>", "?")
    if mode == "extended":
        text = _EXTENDED_CLITICS.sub(r"'\1", text)
        text = re.sub(r"^N(?= )", "1", text, flags=re.M)
        text = re.sub(r"(?<= )N$", "1", text, flags=re.M)
        text = text.replace("$ 1", "$1").replace("# 1", "#1")
        text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
        text = _OPEN_BRACKET.sub(r"\1", text)
        text = _CLOSE_BRACKET.sub(r"\1", text)
    return text
