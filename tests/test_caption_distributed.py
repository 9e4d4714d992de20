"""`torchrun --nproc-per-node 2 -m core.caption FOLDER`: two Gloo CPU processes give what one process gives (every file
once, in input order, in every output), and a run whose torchrun group is killed resumes without doing a file twice."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from app_fixtures import jpeg_bytes, make_tiny_bundle
from conftest import COLOURS
from core.caption import imagemeta
from core.caption.library import PART, LibraryConfig, Library, csv_line

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def make_library(root: Path, n: int) -> list[str]:
    """n tiny JPEGs named as COCO names them (the number is the image id), a third in sub/; a broken file.
    Returns the names in input order (sorted relative paths)."""
    for i in range(n):
        path = root / ("sub" if i % 3 == 0 else "") / f"{i + 1:012d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(list(COLOURS.values())[i % len(COLOURS)], size=(40 + i, 36)))
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def caption_command(bundle, root, out, *extra):
    return ["-m", "core.caption", str(root), "--model", str(bundle), "--out", str(out), "--sidecar-ext", ".txt",
            "--jsonl", "--coco-results", str(out.with_suffix(".json")), "--metadata", "--device", "cpu", *extra]


def read_csv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def outputs(root: Path, out: Path) -> dict:
    return {"csv": read_csv(out),
            "jsonl": [json.loads(x) for x in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines()],
            "coco": json.loads(out.with_suffix(".json").read_text(encoding="utf-8")),
            "sidecars": {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in root.rglob("*.txt")},
            "embedded": {p.relative_to(root).as_posix(): imagemeta.read_caption(p) for p in root.rglob("0*.jpg")},
            "parts": sorted(p.name for p in [*root.rglob(f"*{PART}*"), *out.parent.glob(f"*{PART}*")])}


@pytest.mark.slow
def test_two_processes_write_what_one_writes(bundle, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    names = make_library(one, 11)
    shutil.copytree(one, two)
    done = subprocess.run([sys.executable, *caption_command(bundle, one, tmp_path / "one.csv", "--batch-size", "2")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*TORCHRUN, *caption_command(bundle, two, tmp_path / "two.csv", "--batch-size", "2")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "rank 0/2: captioned 6 images" in done.stderr and "rank 1/2: captioned 6 images" in done.stderr
    got, want = outputs(two, tmp_path / "two.csv"), outputs(one, tmp_path / "one.csv")
    assert [r["image"] for r in got["csv"]] == names  # input order, every file once (the broken one with its error)
    assert got == want  # the same captions, scores and files as one process
    assert [o["file_name"] for o in got["jsonl"]] == [n for n in names if n != "broken.jpg"]
    assert sorted(e["image_id"] for e in got["coco"]) == list(range(1, 12))
    assert len(got["sidecars"]) == 11 and all(got["embedded"].values()) and got["parts"] == []


@pytest.mark.slow
def test_several_files_under_torchrun_come_back_in_input_order(bundle, tmp_path):
    names = make_library(tmp_path / "lib", 5)
    files = [str(tmp_path / "lib" / n) for n in names]
    done = subprocess.run([*TORCHRUN, "-m", "core.caption", *reversed(files), "--model", str(bundle), "--device", "cpu",
                           "--out", str(tmp_path / "files.csv")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [r["image"] for r in read_csv(tmp_path / "files.csv")] == files  # collect_images's order: sorted
    assert sum(1 for r in read_csv(tmp_path / "files.csv") if r["error"]) == 1


def kill_family(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers at once (they run in sessions of their own, so killpg would miss them)."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=10)


@pytest.mark.slow
def test_killed_torchrun_run_resumes_and_captions_each_file_once(bundle, tmp_path):
    root, out, n = tmp_path / "lib", tmp_path / "out.csv", 40
    names = make_library(root, n)
    cmd = [*TORCHRUN, *caption_command(bundle, root, out, "--batch-size", "1")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240

    def part_rows() -> int:
        return sum(max(len(p.read_bytes().splitlines()) - 1, 0) for p in tmp_path.glob(f"out.csv{PART}*"))

    while part_rows() < 6:  # both ranks under way, far from done
        assert proc.poll() is None and time.time() < deadline, "the run ended or is too slow"
        time.sleep(0.02)
    kill_family(proc)
    assert not out.exists() and 0 < part_rows() < n + 1  # the merge never happened: the parts hold the work
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stderr
    got = outputs(root, out)
    assert [r["image"] for r in got["csv"]] == names  # each exactly once, in input order
    assert [o["file_name"] for o in got["jsonl"]] == [x for x in names if x != "broken.jpg"]
    assert sorted(e["image_id"] for e in got["coco"]) == list(range(1, n + 1))
    assert len(got["sidecars"]) == n and len(got["embedded"]) == n and all(got["embedded"].values())
    assert got["parts"] == []


def test_leftover_parts_are_merged_once_in_input_order(tmp_path):
    """A run killed between writing the merged CSV and deleting the parts: the next run adds no row twice."""
    root = tmp_path / "lib"
    make_library(root, 3)
    out = tmp_path / "out.csv"
    lib = Library(LibraryConfig(str(root), csv=str(out)))
    row = lambda name: [name, f"a {name}", "-1.0000", "", "", "", "", ""]  # noqa: E731
    lib.csv.append([csv_line(row("sub/000000000001.jpg"))])
    lib.csv.close()
    for rank, rows in enumerate([["sub/000000000001.jpg", "000000000003.jpg"], ["000000000002.jpg"]]):
        Path(f"{out}{PART}{rank}").write_text("image,caption\n" + "".join(csv_line(row(r)) for r in rows))
    order = {n: i for i, n in enumerate(["000000000002.jpg", "000000000003.jpg", "sub/000000000001.jpg"])}
    assert lib.merge_parts(order, recovering=True) == 2
    assert [r["image"] for r in read_csv(out)] == list(order)
    assert not list(tmp_path.glob(f"*{PART}*"))


def test_parts_are_merged_in_input_order_also_for_names_like_formulas(tmp_path):
    """The CSV spells "=b.jpg" as "'=b.jpg" (the formula guard): the merge still puts it where the input had it."""
    out = tmp_path / "out.csv"
    lib = Library(LibraryConfig(str(tmp_path), csv=str(out)))
    row = lambda name: [name, "a caption", "-1.0000", "", "", "", "", ""]  # noqa: E731
    for rank, rows in enumerate([["=b.jpg", "a.jpg"], ["-c.jpg"]]):
        Path(f"{out}{PART}{rank}").write_text("image,caption\n" + "".join(csv_line(row(r)) for r in rows))
    assert lib.merge_parts({"-c.jpg": 0, "=b.jpg": 1, "a.jpg": 2}) == 2
    assert [r["image"] for r in read_csv(out)] == ["'-c.jpg", "'=b.jpg", "a.jpg"]


def test_a_run_without_torchrun_takes_over_what_a_killed_torchrun_run_left(bundle, tmp_path):
    from core.nn.captioner import Captioner
    from core.caption.library import caption_library

    root, out = tmp_path / "lib", tmp_path / "out.csv"
    names = make_library(root, 4)
    for rank, name in enumerate(names[:2]):  # each rank had captioned one image when the group was killed
        Path(f"{out}{PART}{rank}").write_text("image\n" + csv_line([name, "a thing", "-1.0000", "", "", "", "", ""]))
    pr = caption_library(LibraryConfig(str(root), csv=str(out)), Captioner(bundle, device="cpu"))
    assert (pr.skipped, pr.done) == (2, 3)
    assert [r["image"] for r in read_csv(out)] == names and not list(tmp_path.glob(f"*{PART}*"))
