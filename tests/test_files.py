"""core/base/files.py: the JSON Lines reader (the atomic writes are tested where they are used)."""
import json

from core.base.files import read_json_lines


def test_read_json_lines_keeps_whole_object_lines_only(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert read_json_lines(path) == []  # missing: nothing yet
    lines = [{"a": 1}, "not an object", {"caption": "one\u2028two\x85three"}, {"b": 2}]
    text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines) + "not json\n\r\n"
    path.write_text(text + '{"torn": tr', encoding="utf-8")  # the writer died mid-line
    assert read_json_lines(path) == [{"a": 1}, {"caption": "one\u2028two\x85three"}, {"b": 2}]
    path.write_text(text + '{"whole": "but no newline yet"}', encoding="utf-8")  # still being written
    assert read_json_lines(path)[-1] == {"b": 2}
    path.write_text('{"crlf": 1}\r\n', encoding="utf-8", newline="")  # a file saved on Windows
    assert read_json_lines(path) == [{"crlf": 1}]
