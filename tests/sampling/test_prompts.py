"""Prompts -> clamped positions and ids; every bad prompt raises one clear PromptError."""

import json

import pytest

from sedd_megatron.sampling import (
    Prompt,
    PromptError,
    conditions_for,
    encode_prompt,
    ids_encoder,
    parse_template,
    read_prompts,
)

# A toy tokenizer: one token per word, id = word length (so tests can read positions).
encode = lambda text: [len(w) for w in text.split()]


def test_prefix_and_suffix_positions():
    c = encode_prompt(Prompt(prefix="a bb ccc", suffix="dddd e"), encode, 10)
    assert c.locs.tolist() == [0, 1, 2, 8, 9]
    assert c.ids.tolist() == [1, 2, 3, 4, 1]


def test_template_holes_and_free_tail():
    c = encode_prompt(Prompt(template="a bb [MASK:3] ccc [MASK:1]"), encode, 12)
    assert c.locs.tolist() == [0, 1, 5]  # positions 2-4, 6 and 7.. are generated
    assert c.ids.tolist() == [1, 2, 3]
    assert parse_template("x[MASK:2][MASK:1]y") == ["x", 2, 1, "y"]


def test_template_with_suffix_and_dense():
    c = encode_prompt(Prompt(template="[MASK:2] a", suffix="bb"), encode, 6)
    assert c.locs.tolist() == [2, 5]
    mask, values = c.dense(6)
    assert mask.tolist() == [False, False, True, False, False, True]
    assert values[mask].tolist() == [1, 2]


def test_unconditional_and_exact_fit():
    assert encode_prompt(Prompt(), encode, 4).locs.numel() == 0
    assert encode_prompt(Prompt(prefix="a b", suffix="c d"), encode, 4).locs.tolist() == [
        0,
        1,
        2,
        3,
    ]


BAD = [
    (Prompt(prefix="a b c d e"), 4, "needs 5 positions (prefix 5) but the sequence has 4"),
    (Prompt(prefix="a b c", suffix="d e"), 4, "needs 5 positions (prefix 3 + suffix 2)"),
    (Prompt(template="a [MASK:4]"), 4, "needs 5 positions (template 5)"),
    (Prompt(template=""), 8, "the template is empty"),
    (Prompt(template="   "), 8, "the template is empty"),
    (Prompt(template="a [MASK:0] b"), 8, "has length 0"),
    (Prompt(template="a [MASK:x] b"), 8, "malformed hole '[MASK:x]' at character 2"),
    (Prompt(template="a [MASK] b"), 8, "malformed hole '[MASK]'"),
    (Prompt(template="a [MASK:3 b"), 8, "unclosed hole"),
    (Prompt(prefix="a", template="[MASK:1]"), 8, "a prefix or a template, not both"),
    (Prompt(prefix=""), 8, "the prefix is empty"),
    (Prompt(prefix="a bbbbbbbbbbbb"), 8, "token id 12, outside the model's vocabulary of 10"),
]


@pytest.mark.parametrize("prompt,length,message", BAD, ids=[b[2][:24] for b in BAD])
def test_bad_prompts(prompt, length, message):
    with pytest.raises(PromptError) as info:
        encode_prompt(prompt, encode, length, num_tokens=10)
    assert message in str(info.value)


def test_jsonl_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"prefix": "a"}, {}, {"template": "[MASK:2] b", "suffix": "c", "id": 7}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    prompts = read_prompts(path)
    assert prompts[1] == Prompt() and prompts[2].id == 7
    assert [c.locs.tolist() for c in conditions_for(prompts, encode, 5)] == [[0], [], [2, 4]]


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"prefix": "a"}\n{"prefx": "b"}', "p.jsonl:2: unknown key 'prefx' (allowed: id, prefix"),
        ('{"prefix": 3}', "p.jsonl:1: 'prefix' must be a string"),
        ("[1, 2]", "p.jsonl:1: expected a JSON object"),
        ('{"prefix": ', "p.jsonl:1: not valid JSON"),
        ("\n", "no prompts in the file"),
    ],
)
def test_bad_jsonl(tmp_path, text, message):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(PromptError) as info:
        read_prompts(path)
    assert message in str(info.value)


def test_error_names_the_prompt_among_many():
    prompts = [Prompt(prefix="a"), Prompt(template="[MASK:0]")]
    with pytest.raises(PromptError, match=r'prompt \{"template": "\[MASK:0\]"\}: hole'):
        conditions_for(prompts, encode, 8)


def test_ids_encoder():
    assert ids_encoder("5 6,7") == [5, 6, 7]
    with pytest.raises(PromptError, match="prompts are token ids"):
        ids_encoder("hello")


def test_space_before_hole_goes_to_the_hole():
    seen = []
    spy = lambda text: seen.append(text) or encode(text)
    encode_prompt(Prompt(template="is [MASK:2] . end "), spy, 8)
    encode_prompt(Prompt(prefix="Hi, my name is "), spy, 8)
    assert seen == ["is", " . end ", "Hi, my name is"]
