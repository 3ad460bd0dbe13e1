"""preprocess(): text/JSONL -> .bin/.idx with EOS per document; workers; clear errors, no debris."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from sedd_megatron.datasets.preprocess import preprocess
from sedd_megatron.datasets.tokenizers import TextTokenizer
from sedd_megatron.errors import DataError
from tools.preprocess_data import main as cli_main

REPO = Path(__file__).resolve().parents[2]
DOCS = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.\nSecond line of the same document.",
    "Ünïcödé and emoji 😀, tabs\tand  spaces ",
    "Penn Treebank style: the company 's shares rose N % <unk>",
]


def read_back(prefix) -> list[list[int]]:
    ds = IndexedDataset(str(prefix))
    assert len(ds.document_indices) == len(ds) + 1  # one sequence per document
    return [ds[i].tolist() for i in range(len(ds))]


def expected(tok, docs):
    return [tok.encode(d) + [tok.eos_id] for d in docs]


def test_jsonl_documents_plus_eos(gpt2, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    stats = preprocess([src], tmp_path / "out", gpt2, json_keys=["text"], progress=False)
    assert read_back(tmp_path / "out") == expected(gpt2, DOCS)
    assert stats.documents == {"text": 4}
    assert stats.tokens["text"] == sum(map(len, expected(gpt2, DOCS)))


def test_text_per_file_and_per_line(gpt2, tmp_path):
    files = []
    for i, doc in enumerate(DOCS):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(doc, encoding="utf-8")
    preprocess(files, tmp_path / "files", gpt2, progress=False)
    assert read_back(tmp_path / "files") == expected(gpt2, DOCS)

    lines = tmp_path / "lines.txt"
    lines.write_text("first line\n\n  \nsecond line \r\nthird", encoding="utf-8")
    preprocess([lines], tmp_path / "lines", gpt2, per_line=True, progress=False)
    assert read_back(tmp_path / "lines") == expected(gpt2, ["first line", "second line ", "third"])


def test_several_json_keys_give_one_dataset_each(gpt2, tmp_path):
    src = tmp_path / "qa.jsonl"
    src.write_text('{"q": "a question", "a": "an answer"}\n{"q": "", "a": "x"}\n')
    stats = preprocess([src], tmp_path / "qa", gpt2, json_keys=["q", "a"], progress=False)
    assert stats.skipped_empty == 1
    assert read_back(tmp_path / "qa_q") == expected(gpt2, ["a question"])
    assert read_back(tmp_path / "qa_a") == expected(gpt2, ["an answer", "x"])


def test_two_workers_write_identical_files(gpt2, tmp_path):
    src = tmp_path / "many.jsonl"
    docs = [f"document {i}: " + " ".join(DOCS[i % 4] for _ in range(i % 7)) for i in range(700)]
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    preprocess([src], tmp_path / "w1", gpt2, workers=1, progress=False)
    preprocess([src], tmp_path / "w2", gpt2, workers=2, progress=False)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1{ext}").read_bytes() == (tmp_path / f"w2{ext}").read_bytes()
    assert read_back(tmp_path / "w2") == expected(gpt2, docs)


class TinyVocab(TextTokenizer):
    """Character codes as ids with a 200-id vocabulary: "é" (233) falls outside it."""

    kind, spec, vocab_size, eos_id = "tiny", {}, 200, 199

    def encode(self, text):
        return [ord(c) for c in text]


def _bad_cases(tmp: Path):
    good = tmp / "good.jsonl"
    good.write_text('{"text": "fine"}\n')
    (tmp / "empty.txt").write_text("")
    (tmp / "badjson.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    (tmp / "notobj.jsonl").write_text('["text"]\n')
    (tmp / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp / "accent.txt").write_text("abc\ncafé\n", encoding="utf-8")
    return {
        "missing": (dict(inputs=[tmp / "nope.txt"]), r"input file not found: .*nope\.txt"),
        "empty": (dict(inputs=[tmp / "empty.txt"]), r"input file is empty: .*empty\.txt"),
        "key": (dict(inputs=[good], json_keys=["body"]), r"good\.jsonl:1: JSON key 'body' missing"),
        "json": (dict(inputs=[tmp / "badjson.jsonl"]), r"badjson\.jsonl:3: invalid JSON"),
        "object": (dict(inputs=[tmp / "notobj.jsonl"]), r"notobj\.jsonl:1: expected a JSON object"),
        "encoding": (dict(inputs=[tmp / "latin1.txt"]), r"latin1\.txt: not valid utf-8"),
        "vocab": (
            dict(inputs=[tmp / "accent.txt"], per_line=True, tokenizer=TinyVocab()),
            r"accent\.txt:2: token id 233 outside the vocabulary \(size 200\)",
        ),
        "outdir": (dict(inputs=[good], prefix=tmp / "no" / "dir" / "out"), "output directory"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "empty", "key", "json", "object", "encoding", "vocab", "outdir"]
)
def test_bad_input_is_a_clear_error_and_leaves_no_files(gpt2, tmp_path, case):
    kwargs, message = _bad_cases(tmp_path)[case]
    prefix = kwargs.pop("prefix", tmp_path / "out")
    tokenizer = kwargs.pop("tokenizer", gpt2)
    with pytest.raises(DataError, match=message):
        preprocess(kwargs.pop("inputs"), prefix, tokenizer, progress=False, **kwargs)
    assert not [p.name for p in tmp_path.rglob("*") if p.suffix in (".bin", ".idx")]
    assert not [p.name for p in tmp_path.rglob("*tmp*")]


def test_failure_keeps_a_previous_good_output(gpt2, tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.jsonl"
    good.write_text("hello")
    bad.write_text("{not json}\n")
    preprocess([good], tmp_path / "out", gpt2, progress=False)
    before = (tmp_path / "out.bin").read_bytes()
    with pytest.raises(DataError):
        preprocess([bad], tmp_path / "out", gpt2, progress=False)
    assert (tmp_path / "out.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.jsonl",
        "good.txt",
        "out.bin",
        "out.idx",
    ]  # noqa: E501


def test_cli_success_and_error_exit(gpt2, tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "Hello world"}\n')
    argv = ["--input", str(src), "--output-prefix", str(tmp_path / "a"), "--no-progress"]
    assert cli_main(argv) == 0
    # Megatron's naming: PREFIX_{key}_document, the key of text and default JSONL being "text"
    assert read_back(tmp_path / "a_text_document") == [[15496, 995, 50256]]
    assert not (tmp_path / "a.bin").exists()
    assert "a_text_document.bin/.idx: 1 documents, 3 tokens" in capsys.readouterr().out

    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"q": "a question", "a": "an answer"}\n')
    argv = ["--input", str(qa), "--json-keys", "q", "a", "--output-prefix", str(tmp_path / "qa")]
    assert cli_main([*argv, "--no-progress"]) == 0
    assert read_back(tmp_path / "qa_q_document") == expected(gpt2, ["a question"])
    assert read_back(tmp_path / "qa_a_document") == expected(gpt2, ["an answer"])

    missing = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", "nope.txt",
               "--output-prefix", str(tmp_path / "b")]  # fmt: skip
    result = subprocess.run(missing, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("error: input file not found: nope.txt")
