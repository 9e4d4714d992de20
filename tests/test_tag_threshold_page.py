"""The Caption page's tag threshold (sidebar) reaches the captioner: a higher one keeps fewer tags."""
from __future__ import annotations

from test_app_pages import CAPTION, REPO, bundle_dir, models, open_page  # noqa: F401 (fixtures)


def test_the_tag_threshold_slider_filters_the_tags_column(models):
    cat = (REPO / "assets" / "samples" / "cat.jpg").read_bytes()
    tags = {}
    for threshold in (0.0, 0.1, 0.99):
        at = open_page(CAPTION).run()
        at.slider(key="tag-threshold").set_value(threshold).run()
        at.file_uploader[0].set_value([("cat.jpg", cat, "image/jpeg")])
        at.run()
        at.button[0].click().run()  # Caption uploaded images
        assert not at.exception
        tags[threshold] = at.data_editor[0].value["tags"][0]
    assert tags[0.1].startswith("cat 0.")  # the ImageNet head of the tiny model's backbone knows a cat
    assert len(tags[0.0].split("; ")) == 3 > len(tags[0.1].split("; ")) >= 1  # 0: the top 3, however unlikely
    assert tags[0.99] == ""  # nothing is that sure


def test_the_folder_flow_writes_tags_files_and_jsonl_tags(models, tmp_path):
    import json
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(REPO / "assets" / "samples" / "cat.jpg", folder / "cat.jpg")
    at = open_page(CAPTION).run()
    at.slider(key="tag-threshold").set_value(0.5).run()
    at.get("button_group")[0].set_value("A folder on this computer").run()
    at.text_input(key="lib-root").set_value(str(folder)).run()
    at.checkbox(key="lib-csv").uncheck()
    at.checkbox(key="lib-tags-file").check()
    at.checkbox(key="lib-jsonl").check()
    at.checkbox(key="lib-jsonl-tags").check()
    at.button(key="lib-start").click().run()
    assert not at.exception
    assert not (folder / "cat.tags.txt").exists()  # a file beside the photo: reviewed first, then written
    at.button(key="lib-write").click().run()
    assert not at.exception
    assert (folder / "cat.tags.txt").read_text(encoding="utf-8") == "cat\n"  # only the sure tag: threshold 0.5
    row = json.loads((folder / "metadata.jsonl").read_text(encoding="utf-8"))
    assert row["file_name"] == "cat.jpg" and row["tags"] == "cat" and row["text"]
