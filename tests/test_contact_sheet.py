"""tools/contact_sheet.py: photos with their captions on PNG pages, and a form to judge them."""
import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from contact_sheet import choose, make_sheets  # noqa: E402


def test_sheets_show_the_same_photos_for_two_models_and_survive_a_missing_photo(tmp_path):
    photos = []
    for i in range(12):
        p = tmp_path / f"img{i:02d}.jpg"
        Image.new("RGB", (64, 48), (20 * i, 100, 200)).save(p)
        photos.append(str(p))
    photos.append(str(tmp_path / "gone.jpg"))  # listed but not on disk
    a = {p: f"a dog number {i} runs on the grass" for i, p in enumerate(photos)}
    b = {p: f"a cat {i}" for i, p in enumerate(reversed(photos))}
    (tmp_path / "a.json").write_text(json.dumps({"model": "models/a", "captions": a}))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert choose(a, 10, seed=3) == choose(b, 10, seed=3) != choose(a, 10, seed=4)
    written = make_sheets(tmp_path / "a.json", tmp_path / "out" / "a", photos=13, seed=0, per_page=5)
    assert [p.name for p in written] == ["a_1.png", "a_2.png", "a_3.png", "a.md"]
    with Image.open(written[0]) as page:
        assert page.width > 5 * 224 and page.height > 224
    form = written[-1].read_text()
    assert form.count("\n| ") == 13 + 1 and "gone.jpg" in form and "a dog number" in form
