"""Every page under AppTest: no exception, and the widgets drive the engine (a tiny real model, a fake trainer)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import io
import time
import zipfile
from pathlib import Path

import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from app_fixtures import fake_torchrun_command, fake_trainer_command, jpeg_bytes, make_tiny_bundle
from conftest import make_flickr
from core.bundle.store import get_active
from core.runs import jobs
from core.runs.folder import read_progress, run_info, summarize

REPO = Path(__file__).resolve().parent.parent
HOME, CAPTION, TRAIN = "app.py", "pages/1_Caption.py", "pages/2_Train.py"
TIMEOUT = 120  # the first run loads the backbone


def open_page(page: str) -> AppTest:
    """A page of the app as the server runs it: app.py is the entry point, so the sidebar menu's links resolve."""
    at = AppTest.from_file(str(REPO / HOME), default_timeout=TIMEOUT)
    return at if page == HOME else at.switch_page(page)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    make_tiny_bundle(models / "tiny-attention", decoder="attention")
    make_tiny_bundle(models / "tiny-showtell", decoder="show_tell")
    return models


@pytest.fixture
def models(bundle_dir, monkeypatch):
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(bundle_dir))
    return bundle_dir


@pytest.fixture(autouse=True)
def caption_sessions(tmp_path, monkeypatch):
    """The Caption page keeps its tables under <runs>/captions: each test gets its own, never the repository's."""
    monkeypatch.setenv("CAPTION_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs" / "captions"


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTION_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def downloads(monkeypatch):
    """Bytes handed to st.download_button, by file name."""
    got = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):
        got[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return got


def texts(at) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "error", "warning", "info", "success")
                     for e in getattr(at, kind))


def edit_table(at, key: str, edited_rows: dict) -> None:
    """What a user's edits (and ticks) in the review table send: the whole edit state of the data_editor."""
    at.session_state[key] = {"edited_rows": edited_rows, "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception


def test_home_shows_model_device_dataset_and_links(models, runs):
    at = open_page(HOME).run()
    assert not at.exception
    body = texts(at)
    assert "tiny-attention" in body and "Compute device" in body and "cocoapi/" in body
    assert [m.label for m in at.metric] == ["BLEU-4", "CIDEr"] and "Scores from validation" in body
    assert "How good its captions are" in body
    assert [p.proto.label for p in at.sidebar.get("page_link")] == ["Home", "Caption", "Train"]  # not "app"
    assert len(at.get("page_link")) == 5  # and two links in the page
    assert "A random test model." not in body  # the card on request only: it is slow for the browser to draw
    at.toggle(key="show-card").set_value(True).run()
    assert "A random test model." in texts(at)


def test_home_without_models(tmp_path, monkeypatch, runs):
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(tmp_path / "none"))
    at = open_page(HOME).run()
    assert not at.exception and "No model yet" in at.warning[0].value


def test_caption_page_without_models(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(tmp_path / "none"))
    at = open_page(CAPTION).run()
    assert not at.exception and "No model" in at.warning[0].value
    assert at.button[1].disabled  # "Try sample images" needs a model


def test_caption_uploads_bad_files_and_edited_csv(models, downloads):
    at = open_page(CAPTION).run()
    assert at.selectbox(key="model").value == "tiny-attention"
    assert "attention decoder · BLEU-4 12.3 · CIDEr 45.6" in texts(at)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("../../outside/green.jpg", jpeg_bytes((0, 200, 0)))
        zf.writestr("readme.txt", "not an image")
    uploader = at.file_uploader[0]
    uploader.set_value([("red.jpg", jpeg_bytes(), "image/jpeg"), ("broken.jpg", b"\xff\xd8 not really", "image/jpeg"),
                        ("empty.png", b"", "image/png"), ("more.zip", zipped.getvalue(), "application/zip")])
    at.run()
    at.button[0].click().run()  # Caption uploaded images
    assert not at.exception
    batch = at.session_state.batch
    rows = at.data_editor[0].value
    names = ["red.jpg", "broken.jpg", "empty.png", "outside/green.jpg", "readme.txt"]  # every file gets a row
    assert list(rows["image"]) == names
    assert [bool(e) for e in rows["error"]] == [False, True, True, False, True]
    assert "empty" in rows["error"][2] and rows["caption"][0] and rows["thumbnail"][0].startswith("data:image/")
    assert "not an image file" in rows["error"][4]
    csv_rows = list(csv.DictReader(io.StringIO(downloads["captions.csv"].decode("utf-8-sig"))))
    assert [r["image"] for r in csv_rows] == names

    # an edit in the table goes into the CSV; the batch (and its results) survive the rerun
    at.session_state[f"editor-{batch['id']}-all-0"] = {"edited_rows": {0: {"caption": "=a red thing"}},
                                                        "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception
    csv_rows = list(csv.DictReader(io.StringIO(downloads["captions.csv"].decode("utf-8-sig"))))
    assert csv_rows[0]["caption"] == "'=a red thing"  # edited, and neutralised as a formula
    assert at.session_state.batch["id"] == batch["id"]

    # the up-close view opens on the row whose view box is ticked: the error of a bad file, heat-maps of a good one
    assert "Tick *view* on a row" in texts(at) and "Where the model looked" not in texts(at)
    edit_table(at, f"editor-{batch['id']}-all-0", {0: {"caption": "=a red thing"}, 1: {"look": True}})
    assert any("broken.jpg" in e.value for e in at.error)
    edit_table(at, f"editor-{batch['id']}-all-0", {0: {"caption": "=a red thing", "look": True}, 1: {"look": True}})
    assert not at.exception and "Where the model looked" in texts(at)  # the box ticked last
    assert at.image[-1].captions == batch["results"][0].words  # one heat-map per word
    assert "Double-click a caption" in texts(at)  # the edit hint says what the grid needs


def test_caption_sample_images_with_chosen_options(models):
    at = open_page(CAPTION).run()
    at.selectbox(key="model").select("tiny-showtell")
    at.slider[0].set_value(1)  # beam width 1: greedy, no alternatives
    at.slider[1].set_value(5)
    at.run()
    at.button[1].click().run()  # Try sample images
    assert not at.exception
    results = at.session_state.batch["results"]
    assert at.session_state.batch["model"] == "tiny-showtell"
    assert {r.image for r in results} >= {"cat.jpg", "astronaut.jpg"}
    assert all(r.caption and not r.error and len(r.words) <= 5 and r.attention is None for r in results)
    assert "Where the model looked" not in texts(at)  # no attention in Show-and-Tell


def test_train_page_rejects_a_bad_dataset(models, runs, tmp_path):
    at = open_page(TRAIN).run()
    assert not at.exception
    at.text_input[0].set_value(str(tmp_path / "nothing-here"))
    at.text_input[1].set_value("fine-name")
    at.button[0].click().run()
    assert not at.exception
    assert "cannot be used" in at.error[0].value and "does not exist" in at.error[0].value
    assert any("cocodataset.org" in m.value for m in at.markdown)  # COCO_HELP
    assert not any(p.is_dir() for p in runs.iterdir())  # no run folder (the form's values are remembered)
    at.text_input[1].set_value("bad/name")
    at.button[0].click().run()
    assert "model name" in at.error[0].value


def test_train_page_start_monitor_stop_resume(models, runs, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "TRAIN_COMMAND", tuple(fake_trainer_command(tmp_path)))
    data = make_flickr(tmp_path / "data", held_out=6)
    at = open_page(TRAIN).run()
    at.text_input[0].set_value(str(data))
    at.selectbox[1].select("show_tell")
    at.number_input[0].set_value(16)
    at.text_input[1].set_value("tiny-run")
    at.button[0].click().run()
    assert not at.exception and jobs.current_job(runs) is None  # a 10-photo dataset: asked first
    next(b for b in at.button if b.label == "Start anyway").click().run()
    assert not at.exception
    job = jobs.current_job(runs)
    assert job is not None
    config = run_info(job.run_dir).config
    assert (config["model"]["decoder"], config["model"]["embed_dim"], config["model_name"]) == ("show_tell", 16,
                                                                                                "tiny-run")
    assert config["models_dir"] == str(models) and config["data"] == str(data)

    deadline = time.time() + 30
    while not summarize(read_progress(job.run_dir)).losses and time.time() < deadline:
        time.sleep(0.1)
    at.run()  # a reload re-attaches to the running job
    assert not at.exception
    assert any(b.label == "Stop" for b in at.button) and at.get("progress")
    assert "tiny-run" in texts(at)
    next(b for b in at.button if b.label == "Stop").click().run()
    assert jobs.wait_for_exit(job, 30)
    at.run()
    assert not at.exception and run_info(job.run_dir).status == "stopped"
    assert any(b.label == "Start training" for b in at.button)  # the form is back
    next(b for b in at.button if b.label == "Resume").click().run()
    # the resumed stand-in trains 3 steps and ends: on a loaded machine it may be done before this line
    from core.runs.folder import Job

    again = jobs.current_job(runs) or Job.load(job.run_dir)
    assert again is not None and again.resumed
    assert jobs.wait_for_exit(again, 30)
    at.run()
    assert not at.exception
    assert run_info(job.run_dir).status == "done"
    assert any(b.label == "Use this model for captioning" for b in at.button)
    assert list(at.dataframe[0].value["status"]) == ["done"]


def fake_gpus(monkeypatch, n: int) -> None:
    """The page sees n CUDA GPUs (the device report that the server's warm-up makes in a subprocess)."""
    from ui import warm

    report = {"device": "cuda", "name": "NVIDIA Test GPU, 80.0 GB", "torch": "2.14.1 (CUDA 13.0)", "gpus": n}
    monkeypatch.setattr(warm, "device_info", lambda: dict(report))


def test_train_page_runs_on_all_gpus_through_torchrun(models, runs, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "TRAIN_COMMAND", tuple(fake_trainer_command(tmp_path)))
    monkeypatch.setattr(jobs, "TORCHRUN", fake_torchrun_command(tmp_path))  # a stand-in launcher: N children
    fake_gpus(monkeypatch, 1)
    at = open_page(TRAIN).run()
    assert not at.exception and "GPUs" not in [s.label for s in at.selectbox]  # one GPU: nothing to choose
    fake_gpus(monkeypatch, 2)
    at.run()
    gpus = next(s for s in at.selectbox if s.label == "GPUs")
    assert gpus.options == ["one GPU", "all 2 GPUs"] and gpus.value == 1  # today's one process unless asked
    at.text_input[0].set_value(str(make_flickr(tmp_path / "data", held_out=6)))
    at.text_input[1].set_value("two-gpus")
    gpus.select(2)
    next(s for s in at.selectbox if s.label == "Device").select("cpu")
    at.button[0].click().run()
    assert "All 2 GPUs need the device auto or cuda" in at.error[0].value and jobs.current_job(runs) is None
    next(s for s in at.selectbox if s.label == "Device").select("auto")
    at.button[0].click().run()
    next(b for b in at.button if b.label == "Start anyway").click().run()  # a 10-photo dataset
    assert not at.exception
    job = jobs.current_job(runs)
    assert job is not None and jobs.processes_of(job.command) == 2 and job.command[1].endswith("fake_torchrun.py")

    deadline = time.time() + 30
    while not summarize(read_progress(job.run_dir)).losses and time.time() < deadline:
        time.sleep(0.1)
    at.run()  # the live monitor follows rank 0's events
    assert not at.exception and at.get("progress") and "On 2 GPUs" in texts(at)
    next(b for b in at.button if b.label == "Stop").click().run()
    assert jobs.wait_for_exit(job, 30)  # both ranks obeyed the STOP file, then the launcher ended
    at.run()
    assert not at.exception and run_info(job.run_dir).status == "stopped"
    next(b for b in at.button if b.label == "Resume").click().run()
    from core.runs.folder import Job

    again = jobs.current_job(runs) or Job.load(job.run_dir)
    assert again.resumed and jobs.processes_of(again.command) == 2  # resumed on as many GPUs
    assert jobs.wait_for_exit(again, 30)
    at.run()
    assert not at.exception and run_info(job.run_dir).status == "done"


def test_train_page_explains_a_failed_run(models, runs, tmp_path):
    job = jobs.start_job({"model_name": "broken"}, runs, command=fake_trainer_command(tmp_path, "error"))
    assert jobs.wait_for_exit(job, 30)
    at = open_page(TRAIN).run()
    assert not at.exception
    assert "Training failed: The dataset folder is empty." in [e.value for e in at.error]
    assert list(at.dataframe[0].value["status"]) == ["error"]
    assert any(b.label == "Resume" for b in at.button)  # a failed run can be tried again from its checkpoint
    assert "fake trainer up" in at.code[0].value  # the last log lines


@pytest.mark.parametrize("page,drawn", [(HOME, "Active model"), (CAPTION, "Caption images")])
def test_pages_draw_without_importing_torch(models, runs, page, drawn):
    """Home and Caption draw from JSON files only; torch is loaded by the background warm-up, or by a click."""
    code = ("import sys\nfrom streamlit.testing.v1 import AppTest\nimport ui.warm\n"
            "ui.warm.start = lambda: None\n"  # the warm-up thread is the one place that may import torch
            "at = AppTest.from_file('app.py', default_timeout=60)\n"
            f"at = (at if {page!r} == 'app.py' else at.switch_page({page!r})).run()\n"
            "assert not at.exception, at.exception\n"
            f"print('torch' in sys.modules, {drawn!r} in [s.value for s in [*at.title, *at.subheader]])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_captions_come_from_the_worker_and_the_server_never_imports_torch(models, runs):
    """The whole first impression as the server runs it: the warm-up starts the caption worker, the sample captions
    come from it, and the server's own process has not imported torch at the end."""
    code = ("import sys\nfrom streamlit.testing.v1 import AppTest\nfrom ui import warm\n"
            "at = AppTest.from_file('app.py', default_timeout=120).run()\n"
            "at = at.switch_page('pages/1_Caption.py').run()\n"
            "next(b for b in at.button if b.label == 'Try sample images').click().run()\n"
            "assert not at.exception, at.exception\n"
            "rows = at.session_state.batch['results']\n"
            "print('torch' in sys.modules, len(rows), all(r.caption for r in rows), warm._client.alive())\n"
            "warm.reset()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "4", "True", "True"], out.stdout


def make_library(folder: Path) -> Path:
    for i, color in enumerate([(220, 20, 20), (20, 20, 220), (20, 200, 20)]):
        (folder / ("sub" if i else "")).mkdir(parents=True, exist_ok=True)
        (folder / ("sub" if i else "") / f"p{i}.jpg").write_bytes(jpeg_bytes(color))
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


def test_caption_a_local_folder_then_resume(models, tmp_path, downloads):
    """Only files of its own (captions.csv, metadata.jsonl) to write: one step, straight into them, resumable."""
    folder = make_library(tmp_path / "photos")
    at = open_page(CAPTION).run()
    at.get("button_group")[0].set_value("A folder on this computer").run()
    at.text_input(key="lib-root").set_value(str(folder / "nowhere")).run()
    assert "There is no folder" in at.error[0].value
    at.text_input(key="lib-root").set_value(str(folder)).run()
    assert "4 images found" in texts(at)
    at.checkbox(key="lib-jsonl").check()
    at.text_input(key="lib-prefix").set_value("sks, ")
    at.button(key="lib-start").click().run()
    assert not at.exception
    assert "Captioned 4 images" in at.success[0].value and "could not be read" in at.warning[0].value
    rows = read_csv(folder / "captions.csv")
    assert [r["image"] for r in rows] == ["broken.png", "p0.jpg", "sub/p1.jpg", "sub/p2.jpg"]
    assert all(r["caption"].startswith("sks, ") and len(r["caption"]) > 5 for r in rows[1:]) and rows[0]["error"]
    assert json.loads((folder / "metadata.jsonl").read_text().splitlines()[1])["text"] == rows[2]["caption"]
    assert downloads["captions.csv"] == (folder / "captions.csv").read_bytes()
    assert not at.get("button") or not any(b.label.startswith("Write ") for b in at.button)  # nothing to review
    (folder / "p3.jpg").write_bytes(jpeg_bytes((200, 200, 20)))  # a new photo: only it is captioned next time
    at.button(key="lib-start").click().run()
    assert "Captioned 1 images" in at.success[0].value and "4 already had captions" in at.success[0].value
    assert len(read_csv(folder / "captions.csv")) == 5


def write_button(at):
    return next(b for b in at.button if b.label.startswith("Write "))


def test_a_folder_is_reviewed_before_its_photos_are_written(models, tmp_path, caption_sessions):
    """Sidecars and the photos' metadata: captions into the review table first (nothing in the folder changes),
    an edit, then "Write N captions" writes the edited text into the sidecar and the photo; a new page (a reload,
    with the URL's session) finds the table, its edit and the form again."""
    from core.caption import imagemeta

    folder = make_library(tmp_path / "photos")
    before = {p: p.read_bytes() for p in folder.rglob("*")if p.is_file()}
    at = open_page(CAPTION).run()
    at.get("button_group")[0].set_value("A folder on this computer").run()
    at.text_input(key="lib-root").set_value(str(folder)).run()
    at.checkbox(key="lib-sidecar").check()
    at.checkbox(key="lib-metadata").check()
    at.text_input(key="lib-prefix").set_value("sks, ")
    at.run()
    assert "Nothing is written into the photos" in texts(at)
    at.button(key="lib-start").click().run()
    assert not at.exception
    assert "Captioned 4 images for review" in at.success[0].value
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # not one byte written yet
    table = at.data_editor[0].value
    assert list(table["image"]) == ["broken.png", "p0.jpg", "sub/p1.jpg", "sub/p2.jpg"]
    assert table["caption"][1].startswith("sks, ") and table["check"][0] == "error"
    sid = at.session_state.caption_session
    review = read_csv(caption_sessions / sid / next(p.name for p in (caption_sessions / sid).glob("folder-*"))
                      / "review.csv")
    assert [r["image"] for r in review] == list(table["image"])  # the run's CSV holds every row as it came

    batch = at.session_state.folder_batch
    edit_table(at, f"editor-{batch['id']}-all-0", {1: {"caption": "sks, a red photo I checked"}})
    assert write_button(at).label == "Write 3 captions"
    write_button(at).click().run()
    assert not at.exception and "Wrote 3 reviewed captions" in texts(at)
    assert (folder / "p0.txt").read_text(encoding="utf-8") == "sks, a red photo I checked\n"
    assert imagemeta.read_caption(folder / "p0.jpg") == "sks, a red photo I checked"
    assert (folder / "sub" / "p1.txt").read_text(encoding="utf-8") == table["caption"][2] + "\n"
    assert imagemeta.read_caption(folder / "sub" / "p2.jpg") == table["caption"][3]
    assert read_csv(folder / "captions.csv")[0] == {**read_csv(folder / "captions.csv")[0],
                                                    "image": "p0.jpg", "caption": "sks, a red photo I checked"}
    assert not (folder / "broken.txt").exists()

    again = AppTest.from_file(str(REPO / HOME), default_timeout=TIMEOUT).switch_page(CAPTION)
    again.query_params["session"] = sid  # the reload: same URL, a new browser session
    again.run()
    again.get("button_group")[0].set_value("A folder on this computer").run()
    assert not again.exception and again.text_input(key="lib-root").value == str(folder)
    assert again.checkbox(key="lib-sidecar").value and again.checkbox(key="lib-metadata").value
    table = again.data_editor[0].value
    assert list(table["caption"])[1] == "sks, a red photo I checked" and len(table) == 4

    (folder / "p3.jpg").write_bytes(jpeg_bytes((200, 200, 20)))  # continue: only the new photo is captioned
    again.button(key="lib-start").click().run()
    assert "Captioned 1 images for review" in again.success[0].value and "4 already had captions" in texts(again)
    assert len(again.data_editor[0].value) == 5 and again.data_editor[0].value["caption"][1].endswith("I checked")
    write_button(again).click().run()  # skip: the photos written before stay as they are, the new one is written
    assert "Wrote 1 reviewed captions" in texts(again) and "3 photos already had a caption" in texts(again)
    assert (folder / "p3.txt").is_file() and imagemeta.read_caption(folder / "p0.jpg") == "sks, a red photo I checked"
    again.button(key="lib-start").click().run()  # continue with nothing new: what was written is still said
    assert "Captioned 0 images for review" in again.success[0].value and "Wrote 1 reviewed captions" in texts(again)


def open_folder(folder: Path, *outputs: str) -> AppTest:
    """The Caption page's folder form filled in: this folder, these outputs ticked (captions.csv is by default)."""
    at = open_page(CAPTION).run()
    at.get("button_group")[0].set_value("A folder on this computer").run()
    at.text_input(key="lib-root").set_value(str(folder)).run()
    for key in outputs:
        at.checkbox(key=key).check()
    at.run()
    return at


def test_a_folder_the_app_may_not_write_into_is_said_in_words(models, tmp_path, monkeypatch):
    """Regression (issue 21): LibraryConfig's refusal (a system folder) came out of the folder form as a traceback."""
    import core.caption.library

    folder = make_library(tmp_path / "photos")
    monkeypatch.setattr(core.caption.library, "system_folder", lambda path: "/usr")  # as if the photos lay under /usr
    at = open_folder(folder, "lib-sidecar")
    assert not at.exception
    assert any("is a system folder (/usr): no captions are written there" in e.value for e in at.error)
    assert at.button(key="lib-start").disabled and not list(folder.rglob("*.txt"))


def test_a_captions_csv_of_another_program_is_refused_in_words(models, tmp_path):
    """Regression (issue 21): core.caption.library's LibraryError (a captions.csv this program did not write) came out of
    Caption the folder, and of Write after a review, as a traceback; the page now says why, and the file is kept."""
    folder = make_library(tmp_path / "photos")
    theirs = "name,text\np0.jpg,my own words\n"
    (folder / "captions.csv").write_text(theirs)
    at = open_folder(folder)
    at.button(key="lib-start").click().run()
    assert not at.exception
    assert any("is not a captions CSV of this program" in e.value for e in at.error)
    assert (folder / "captions.csv").read_text() == theirs

    at = open_folder(folder, "lib-sidecar")  # reviewed first: the refusal comes with Write
    at.button(key="lib-start").click().run()
    assert not at.exception and "Captioned 4 images for review" in at.success[0].value
    write_button(at).click().run()
    assert not at.exception
    assert any("could not be written" in e.value and "is not a captions CSV of this program" in e.value
               for e in at.error)
    assert (folder / "captions.csv").read_text() == theirs and not list(folder.rglob("*.txt"))


def test_a_full_disk_while_captioning_a_folder_is_said_in_words(models, tmp_path, monkeypatch):
    """Regression (issue 21): core.base.files.DiskFullError out of caption_library was drawn as a traceback."""
    import errno

    import ui.library_view as library_view
    from core.base.files import DiskFullError

    def full(*args, **kwargs):
        raise DiskFullError(errno.ENOSPC, "the disk is full while writing captions.csv; free some space and run "
                                          "again (everything written before is kept)")

    monkeypatch.setattr(library_view, "caption_library", full)
    folder = make_library(tmp_path / "photos")
    at = open_folder(folder)
    at.button(key="lib-start").click().run()
    assert not at.exception
    assert any("the disk is full while writing captions.csv" in e.value for e in at.error)
    at.button(key="lib-start").click().run()  # the page still works: the next click says it again
    assert not at.exception and any("the disk is full" in e.value for e in at.error)


def kill_the_worker_after_the_first_batch(monkeypatch):
    """The caption worker killed outright (as the out-of-memory killer would) once its first batch is back, while it
    captions the rest of the request (small images travel in one request, answered batch by batch). Killed as the
    first batch arrives, not after the page has stored it: the page's work on a batch (pictures to disk) takes long
    enough that the worker would have answered the whole request by then."""
    import os
    import signal

    from core.caption.client import RemoteCaptioner

    real = RemoteCaptioner.iter_captions

    def dies(self, items, **options):
        for k, results in enumerate(real(self, items, **options)):
            if k == 0:
                os.kill(self.client.pid, signal.SIGKILL)
            yield results

    monkeypatch.setattr(RemoteCaptioner, "iter_captions", dies)


def test_a_worker_that_dies_mid_batch_keeps_what_was_captioned(models, tmp_path, monkeypatch):
    """Uploads and a local folder: the rows done stay, the page says what happened, the next click works again."""
    kill_the_worker_after_the_first_batch(monkeypatch)
    at = open_page(CAPTION).run()
    at.file_uploader[0].set_value([(f"p{i}.jpg", jpeg_bytes((20 * i, 90, 200)), "image/jpeg") for i in range(40)])
    at.run()
    at.button[0].click().run()  # Caption uploaded images
    assert not at.exception
    done = at.session_state.batch["results"]
    assert 0 < len(done) < 40 and all(r.caption for r in done)
    assert "Captioning stopped after" in at.error[0].value and "The caption worker stopped" in at.error[0].value
    assert len(at.data_editor[0].value) == len(done)  # what was captioned is there to review and download

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        (folder / f"p{i:02d}.jpg").write_bytes(jpeg_bytes((6 * i, 90, 200)))
    at.get("button_group")[0].set_value("A folder on this computer").run()
    at.text_input(key="lib-root").set_value(str(folder)).run()
    import ui.library_view as library_view

    monkeypatch.setattr(library_view, "PAGE_BATCH", 2)
    at.button(key="lib-start").click().run()
    assert not at.exception
    assert "Captioning stopped after" in at.error[0].value and "continue where it stopped" in at.error[0].value
    rows = list(csv.DictReader(io.StringIO((folder / "captions.csv").read_text(encoding="utf-8-sig"))))
    assert 0 < len(rows) < 40 and all(r["caption"] for r in rows)
    monkeypatch.undo()  # the worker lives on: the next run finishes the folder, each photo captioned once
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(models))
    at.button(key="lib-start").click().run()
    assert "Captioned" in at.success[0].value, texts(at)
    rows = list(csv.DictReader(io.StringIO((folder / "captions.csv").read_text(encoding="utf-8-sig"))))
    assert sorted(r["image"] for r in rows) == [f"p{i:02d}.jpg" for i in range(40)]


def test_review_filter_and_find_replace(models, downloads):
    at = open_page(CAPTION).run()
    at.button[1].click().run()  # Try sample images
    batch = at.session_state.batch
    first = batch["results"][0]
    word = first.caption.split()[-1]
    at.text_input(key=f"find-{batch['id']}").set_value(word)
    at.text_input(key=f"replace-{batch['id']}").set_value("THING").run()
    next(b for b in at.button if b.label == "Replace all").click().run()
    assert not at.exception
    rows = list(csv.DictReader(io.StringIO(downloads["captions.csv"].decode("utf-8-sig"))))
    assert rows[0]["caption"].endswith("THING") and word not in rows[0]["caption"].lower().split()
    assert at.data_editor[0].value["caption"][0].endswith("THING")
    at.get("button_group")[1].set_value("edited").run()  # only the captions changed by the user
    shown = at.data_editor[0].value
    assert set(shown["image"]) == {r.image for r in batch["results"] if word in r.caption.lower().split()}
    at.get("button_group")[1].set_value("flagged").run()
    assert len(at.data_editor[0].value) == 1  # four samples: the least confident one


def test_batches_add_up_survive_a_reload_and_clear_asks_first(models):
    """Regression: "Try sample images" (or any new batch) replaced the table and its edits, and a reload lost both."""
    at = open_page(CAPTION).run()
    assert "far from what this model learned" in texts(at)  # the samples are labelled for what they are
    at.button[1].click().run()  # Try sample images
    batch = at.session_state.batch
    sid = at.session_state.caption_session
    edit_table(at, f"editor-{batch['id']}-all-0", {0: {"caption": "my own caption"}})
    next(b for b in at.button if b.label == "Try sample images").click().run()  # a second batch: added, not replacing
    assert not at.exception
    table = at.data_editor[0].value
    assert len(table) == 8 and table["caption"][0] == "my own caption" and "cat (2).jpg" in list(table["image"])

    again = AppTest.from_file(str(REPO / HOME), default_timeout=TIMEOUT).switch_page(CAPTION)
    again.query_params["session"] = sid  # a reload: the URL keeps the session
    again.run()
    assert not again.exception
    table = again.data_editor[0].value
    assert len(table) == 8 and table["caption"][0] == "my own caption"
    assert all(str(t).startswith("data:image/jpeg") for t in table["thumbnail"])  # the thumbnails too
    assert "Results (tiny-attention)" in [s.value for s in again.subheader]

    fresh = open_page(CAPTION).run()  # a new tab: its own session, offered the last one
    assert not fresh.exception and not fresh.data_editor
    opener = next(b for b in fresh.button if b.label.startswith("Open the captions of your last session"))
    opener.click().run()
    assert len(fresh.data_editor[0].value) == 8 and fresh.session_state.caption_session == sid

    next(b for b in again.button if b.label == "Clear the table").click().run()
    assert "Clear 8 rows, 1 of them with captions you edited?" in again.warning[0].value and again.data_editor
    next(b for b in again.button if b.label == "Keep them").click().run()
    assert again.data_editor and not again.warning
    next(b for b in again.button if b.label == "Clear the table").click().run()
    next(b for b in again.button if b.label == "Yes, clear them").click().run()
    assert not again.exception and not again.data_editor and "batch" not in again.session_state
    reloaded = AppTest.from_file(str(REPO / HOME), default_timeout=TIMEOUT).switch_page(CAPTION)
    reloaded.query_params["session"] = sid
    assert not reloaded.run().data_editor  # cleared on disk too


def test_a_large_upload_keeps_pictures_of_the_first_rows_only(models, monkeypatch):
    import ui.review

    monkeypatch.setattr(ui.review, "MAX_PICTURES", 2)
    at = open_page(CAPTION).run()
    at.button[1].click().run()  # Try sample images: four photos
    batch = at.session_state.batch
    assert len(batch["results"]) == 4 and len(batch["thumbs"]) == 2 and len(batch["images"]) == 2
    assert len(at.data_editor[0].value) == 4  # every row is in the table, the last two without a picture
    edit_table(at, f"editor-{batch['id']}-all-0", {3: {"look": True}})  # the last row up close: no picture kept
    assert batch["results"][-1].caption in texts(at) and len(at.image) == 0


def _finished_run(runs_root: Path, name: str, bundle: Path, started: float) -> None:
    run = runs_root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model_name": name}), encoding="utf-8")
    (run / "progress.jsonl").write_text(
        json.dumps({"event": "start", "time": started, "config": {}, "pid": 0, "resumed": False}) + "\n"
        + json.dumps({"event": "done", "time": started + 1, "bundle": str(bundle), "metrics": {}}) + "\n",
        encoding="utf-8")


def test_use_this_model_applies_to_the_run_that_just_finished(models, runs, tmp_path):
    """Regression (seen in the browser test): a run that had written "done" but whose process was still exiting
    was drawn as the live run, so the runs list below it held only the older run, and "Use this model" made the
    older run's model the active one."""
    _finished_run(runs, "20260101-000000-older", models / "tiny-showtell", 1000.0)
    job = jobs.start_job({"model_name": "newer"}, runs, command=fake_trainer_command(tmp_path, "linger"))
    deadline = time.time() + 30
    while not any(e.get("event") == "done" for e in read_progress(job.run_dir)) and time.time() < deadline:
        time.sleep(0.1)
    assert job.alive()  # done, and still exiting
    at = open_page(TRAIN).run()
    assert not at.exception
    assert next(s for s in at.selectbox if s.label == "Run").value == job.run_dir.name
    try:
        next(b for b in at.button if b.label == "Use this model for captioning").click().run()
        assert get_active(models).name == "tiny-attention"
    finally:
        (models / "active.json").unlink(missing_ok=True)  # the models folder is shared by this module's tests
        assert jobs.wait_for_exit(job, 30)


def test_an_ensemble_is_named_on_home_and_captions_the_samples(tmp_path, monkeypatch):
    from core.bundle.store import set_active
    from core.bundle.join import combine_bundles

    members = [make_tiny_bundle(tmp_path / "parts" / f"m{i}") for i in range(2)]
    combine_bundles(members, tmp_path / "models" / "x2")
    set_active("x2", tmp_path / "models")
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(tmp_path / "models"))
    home = open_page(HOME).run()
    assert not home.exception and "x2** — efficientnet_lite0 encoder, an ensemble of 2 attention decoders" in texts(home)
    at = open_page(CAPTION).run()
    assert "an ensemble of 2 attention decoders" in texts(at)
    at.button[1].click().run()  # Try sample images
    assert not at.exception and len(at.session_state.batch["results"]) == 4
    assert all(r.caption and not r.error for r in at.session_state.batch["results"])


def test_train_page_warns_before_a_run_too_small_to_learn(models, runs, tmp_path):
    """Regression (issue 21): 300 photos x 3 epochs started at once and wrote "a man in a man and a red"."""
    data = make_flickr(tmp_path / "data", held_out=6)
    at = open_page(TRAIN).run()
    at.text_input[0].set_value(str(data))
    at.button[0].click().run()
    assert not at.exception and jobs.current_job(runs) is None
    warning = at.warning[-1].value
    assert "10 photos x 10 epochs is too little to learn" in warning and "a man in a man and a red" in warning
    assert "6,000 photos x 6 epochs" in warning  # what the default model had, for comparison
    next(b for b in at.button if b.label == "Change the settings").click().run()
    assert not at.exception and jobs.current_job(runs) is None
    assert not any("too little" in w.value for w in at.warning) and "Start anyway" not in [b.label for b in at.button]


def test_train_page_remembers_the_last_values(models, runs, tmp_path):
    """Regression (issue 21): the form went back to cocoapi/ (no dataset there) and 10 epochs on every visit."""
    at = open_page(TRAIN).run()
    assert at.text_input[0].value == ""  # no dataset in cocoapi/: an empty field, not a folder without one
    at.text_input[0].set_value(str(tmp_path / "my-photos"))
    at.number_input(key="train-epochs").set_value(3)
    at.number_input(key="train-embed_dim").set_value(32)
    at.number_input(key="train-dropout").set_value(0.2)
    at.selectbox(key="train-decoder").select("show_tell")
    at.checkbox(key="train-allow_missing").check()
    at.button[0].click().run()  # the folder does not exist: no run, but the values are kept
    assert "does not exist" in at.error[0].value
    again = open_page(TRAIN).run()  # a new session (a reload, another day)
    assert not again.exception
    assert again.text_input[0].value == str(tmp_path / "my-photos")
    assert (again.number_input(key="train-epochs").value, again.number_input(key="train-embed_dim").value) == (3, 32)
    assert again.number_input(key="train-dropout").value == 0.2 and again.checkbox(key="train-allow_missing").value
    assert again.selectbox(key="train-decoder").value == "show_tell"
    assert again.text_input[1].value == ""  # not the model name: a new run gets a new one
    # a value the form cannot show (edited by hand, or from an older version): that field's default, no error
    memory = json.loads((runs / "last_form.json").read_text())
    (runs / "last_form.json").write_text(json.dumps({**memory, "epochs": 100_000, "decoder": "gone", "lr": "x"}))
    third = open_page(TRAIN).run()
    assert not third.exception and third.number_input(key="train-epochs").value == 10
    assert third.selectbox(key="train-decoder").value == "attention" and third.number_input(key="train-embed_dim").value == 32
    (runs / "last_form.json").write_text("{not json")
    assert not open_page(TRAIN).run().exception


def test_train_form_explains_every_field_in_plain_words(models, runs):
    at = open_page(TRAIN).run()
    inputs = [w for kind in ("text_input", "number_input", "selectbox", "slider", "checkbox") for w in getattr(at, kind)
              if (w.key or "").startswith("train-")]
    assert len(inputs) >= 20 and all(len(w.proto.help) > 20 for w in inputs), [w.label for w in inputs if not w.proto.help]
    helps = {w.key: w.proto.help for w in inputs}
    assert "each word" in helps["train-embed_dim"] and "memory" in helps["train-hidden_dim"]
    assert "fewer times than this" in helps["train-min_word_count"]
    assert "self-critical" in helps["train-scst_epochs"] and "rewarded" in helps["train-scst_epochs"]


def _bundle_with(folder: Path, metrics: dict) -> Path:
    make_tiny_bundle(folder)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_use_this_model_shows_both_models_figures_and_asks_when_worse(tmp_path, monkeypatch, runs):
    """Regression (issue 21): one click made a model with broken captions the active one, no figures shown."""
    from core.bundle.store import set_active

    models = tmp_path / "models"
    _bundle_with(models / "good", {"val_greedy": {"BLEU-4": 17.7, "CIDEr": 44.7, "distinct_captions": 759}})
    _bundle_with(models / "weak", {"val_greedy": {"BLEU-4": 0.0, "CIDEr": 3.0, "distinct_captions": 4}})
    set_active("good", models)
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(models))
    _finished_run(runs, "20260101-000000-weak", models / "weak", 1000.0)
    at = open_page(TRAIN).run()
    assert not at.exception
    table = at.table[0].value
    assert list(table["this run's model"]) == ["0.0", "3.0", "4"] and list(table["active: good"]) == ["17.7", "44.7", "759"]
    assert list(table.index) == ["BLEU-4", "CIDEr", "different captions"]
    assert any("scores lower than the active one (good)" in w.value for w in at.warning)
    use = next(b for b in at.button if b.label == "Use this model for captioning")
    assert use.disabled
    at.checkbox(key="use-worse-20260101-000000-weak").check().run()
    next(b for b in at.button if b.label == "Use this model for captioning").click().run()
    assert not at.exception and get_active(models).name == "weak"

    # a better model: the figures, and no question
    _bundle_with(models / "better", {"val_greedy": {"BLEU-4": 19.0, "CIDEr": 50.0}})
    _finished_run(runs, "20260102-000000-better", models / "better", 2000.0)
    at = open_page(TRAIN).run()
    assert list(at.table[0].value["this run's model"]) == ["19.0", "50.0", "—"]
    assert not any("scores lower" in w.value for w in at.warning)
    assert not next(b for b in at.button if b.label == "Use this model for captioning").disabled


def test_runs_table_and_charts_of_a_one_epoch_run(models, runs):
    """Regression (issue 21): one epoch drew an axis "0.000000 / 1.000000", the runs table a raw distinct_captions
    column and figures with three decimals."""
    run = runs / "20260101-000000-one"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model_name": "one"}))
    events = [{"event": "start", "time": 1000.0, "config": {}, "pid": 0, "resumed": False},
              {"event": "step", "time": 1001.0, "step": 1, "epoch": 1, "epochs": 1, "total_steps": 1, "loss": 5.1},
              {"event": "epoch", "time": 1002.0, "epoch": 1, "train_loss": 5.1,
               "metrics": {"BLEU-4": 0.0, "CIDEr": 1.234, "distinct_captions": 2}},
              {"event": "stopped", "time": 1003.0}]
    (run / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    at = open_page(TRAIN).run()
    assert not at.exception
    row = at.dataframe[0].value.iloc[0].to_dict()
    assert {k: row[k] for k in ("best epoch", "BLEU-4", "CIDEr", "different captions")} == {
        "best epoch": "—", "BLEU-4": "0.0", "CIDEr": "1.2", "different captions": "2"}  # best: known when done
    assert [m.value for m in at.metric if "last epoch" in m.label] == ["0.0", "1.2"]
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert len(specs) == 2 and all(s["encoding"]["x"]["axis"]["format"] == "d" for s in specs)
    assert specs[1]["encoding"]["x"]["title"] == "epoch" and specs[1]["encoding"]["x"]["scale"]["domain"] == [0, 1]


def test_home_summarises_the_model_in_plain_words(tmp_path, monkeypatch, runs):
    """Home says how good the captions are and what the model is good and bad at, from the bundle's own files;
    the card one click further, its headings smaller than the page's title."""
    models = tmp_path / "models"
    bundle = _bundle_with(models / "dogs", {"val_greedy": {"BLEU-4": 0.0, "CIDEr": 12.0},
                                            "dogs/val": {"BLEU-4": 21.04, "CIDEr": 62.0, "images": 500, "beam": 3}})
    (bundle / "card.md").write_text("# Dogs model\n\n## Good at\n\nDogs on beaches.\n\n## Known weaknesses\n\n"
                                    "Cats: it calls them dogs.\n")
    monkeypatch.setenv("CAPTION_MODELS_DIR", str(models))
    at = open_page(HOME).run()
    assert not at.exception
    body = texts(at)
    assert "How good its captions are: good." in body and "Good at:** Dogs on beaches." in body
    assert "Bad at:** Cats: it calls them dogs." in body
    assert [(m.label, m.value) for m in at.metric] == [("BLEU-4", "21.0"), ("CIDEr", "62.0")]
    assert "BLEU-4: how many of the caption's runs of four words" in body and "CIDEr: how well" in body
    assert "# Dogs model" not in body  # the card on request only
    at.toggle(key="show-card").set_value(True).run()
    assert any(m.value.startswith("#### Dogs model") for m in at.markdown)
    assert not any(line.startswith(("# ", "## ", "### ")) for m in at.markdown for line in m.value.splitlines())
