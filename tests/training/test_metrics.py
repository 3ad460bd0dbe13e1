"""--sedd-metrics-file: a resumed run cuts the file back to its start iteration (in process)."""

import json
import os

from sedd_megatron.training.metrics import append_jsonl, truncate_jsonl


def _records(*iterations):
    return [{"iteration": i, "loss": float(i)} for i in iterations]


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_resuming_drops_the_records_of_re_run_steps(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, _records(1, 2, 3, 4, 5, 6))
    os.chmod(path, 0o640)
    assert truncate_jsonl(str(path), 4) == 2
    for record in _records(5, 6, 7):  # the resumed run re-runs 5 and 6
        append_jsonl(str(path), record)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == _records(1, 2, 3, 4, 5, 6, 7)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl"]  # no temporary file left


def test_nothing_to_drop_leaves_the_file_alone(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, _records(1, 2))
    before = os.stat(path)
    assert truncate_jsonl(str(path), 2) == 0
    assert truncate_jsonl(str(tmp_path / "absent.jsonl"), 0) == 0
    assert not (tmp_path / "absent.jsonl").exists()
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_a_fresh_start_empties_it_and_foreign_lines_stay(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, [*_records(1), {"note": "by hand"}, *_records(2, 3)], tail="\n")
    assert truncate_jsonl(str(path), 0) == 3
    assert path.read_text() == '{"note": "by hand"}\n\n'


def test_a_line_torn_by_a_kill_is_dropped_and_a_lost_newline_restored(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, _records(1, 2), tail='{"iteration": 3, "lo')
    assert truncate_jsonl(str(path), 3) == 1
    assert [json.loads(x) for x in path.read_text().splitlines()] == _records(1, 2)
    _write(path, _records(1), tail=json.dumps(_records(2)[0]))  # cut before its newline
    truncate_jsonl(str(path), 2)
    append_jsonl(str(path), _records(3)[0])
    assert [json.loads(x) for x in path.read_text().splitlines()] == _records(1, 2, 3)
