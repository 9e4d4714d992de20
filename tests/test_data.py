import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_coco, make_flickr, make_image, make_phone_photo
from core.data import datasets, images
from core.data.images import ImageError, collect_images, load_image
from core.data.datasets import inspect_dataset, load_split
from core.nn.batches import iter_image_batches, preprocess


def _jpeg_bytes(arr, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_flickr_layout_with_official_split_lists(tmp_path):
    root = make_flickr(tmp_path / "f")
    train, missing = load_split(root, "train")
    val, _ = load_split(root, "val")
    assert len(train) == 16 and len(val) == 8 and missing == 0
    assert train[0].captions == ["a blue square", "A blue square ."]
    assert [it.path.name for it in train] == sorted(it.path.name for it in train)  # deterministic order


def test_flickr_without_split_lists_uses_a_stable_hash_split(tmp_path):
    root = make_flickr(tmp_path / "f", per_class=6, split_files=False)
    train, _ = load_split(root, "train")
    val, _ = load_split(root, "val")
    assert len(train) + len(val) == 48 and not {i.path for i in train} & {i.path for i in val}


def test_joined_splits_train_on_every_captioned_photo(tmp_path):
    root = make_flickr(tmp_path / "f")
    both, missing = load_split(root, "train+val")
    train, val = load_split(root, "train")[0], load_split(root, "val")[0]
    assert both == train + val and missing == 0
    coco = make_coco(make_coco(tmp_path / "coco", "train"), "val")
    (coco / "images" / "val2017" / "000000000001.jpg").unlink()
    items, missing = load_split(coco, "train+val")
    assert missing == 1 and len(items) == len(load_split(coco, "train")[0]) + 3
    assert datasets.split_label(coco, "train+val") == "train2017+val2017"


def test_coco_layout_through_pycocotools_and_missing_images_are_counted(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "images" / "val2017" / "000000000001.jpg").unlink()
    items, missing = load_split(root, "val")
    assert missing == 1 and len(items) == 3
    assert items[0].captions == ["a red square", "a red square"]


def test_inspect_dataset_says_what_is_missing(tmp_path):
    assert "does not exist" in inspect_dataset(tmp_path / "nope").problems[0]
    (tmp_path / "empty").mkdir()
    assert "neither" in inspect_dataset(tmp_path / "empty").problems[0]
    coco = make_coco(tmp_path / "coco")  # only a val split
    info = inspect_dataset(coco)
    assert info.format == "coco" and not info.ok
    assert any("captions_train2017.json" in p for p in info.problems)
    good = inspect_dataset(make_flickr(tmp_path / "f"))
    assert good.ok and good.splits == {"train": 16, "val": 8} and good.n_captions == 48


def test_load_image_honours_exif_orientation():
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue()).size == (20, 40)  # shown as portrait


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(mode):
    img = Image.new("RGBA" if mode == "RGBA" else "RGB", (8, 8), (10, 200, 30, 0) if mode == "RGBA" else (10, 200, 30))
    img = img if mode == "RGBA" else img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG" if mode != "CMYK" else "JPEG")
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "RGBA":
        assert out.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white, not hidden colour


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = load_image(buf.getvalue()).getpixel((4, 4))
    assert r > 200 and b < 50


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
])
def test_bad_bytes_give_plain_messages(payload, message):
    with pytest.raises(ImageError, match=message):
        load_image(payload)


def test_truncated_jpeg_is_an_error():
    good = _jpeg_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(good[: len(good) // 2])


def test_the_pixel_limit_is_the_one_enforced(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 400)
    assert load_image(_jpeg_bytes(np.zeros((20, 20, 3), np.uint8))).size == (20, 20)  # at the limit: fine
    with pytest.raises(ImageError, match=r"20 x 21 pixels \(0 megapixels\); the limit is 0 megapixels"):
        load_image(_jpeg_bytes(np.zeros((21, 20, 3), np.uint8)))


def test_a_48_megapixel_photo_passes_and_decodes_at_reduced_size():
    assert images.MAX_PIXELS >= 48_000_000
    photo = _jpeg_bytes(np.full((3000, 4000, 3), 90, np.uint8))  # 12 MP here; the scale is what matters
    assert images.probe_image(photo) == ("JPEG", 1000, 750)  # 1/4 scale: the smallest still >= DRAFT_SIDE
    assert load_image(photo, draft_to=512).size == (1000, 750)
    assert load_image(photo).size == (4000, 3000)  # asked for nothing: full size
    _, x, _ = next(iter_image_batches([photo], 32, (0.5,) * 3, (0.5,) * 3, batch_size=1))
    assert x.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("mode, value, dtype", [("I;16", 32768, np.uint16), ("I", 32768, np.int32),
                                                ("F", 0.5, np.float32)])
def test_16_and_32_bit_grey_scale_to_8_bits(mode, value, dtype):
    img = Image.fromarray(np.full((8, 8), value, dtype))
    assert img.mode == mode
    buf = io.BytesIO()
    img.save(buf, "PNG" if mode == "I;16" else "TIFF")
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (128, 128, 128)  # 50% grey, not white


def test_only_the_accepted_formats_are_decoded(monkeypatch):
    from PIL import EpsImagePlugin

    tried = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: tried.append(1) or 1 / 0)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    with pytest.raises(ImageError, match="not one of the formats read here"):
        load_image(eps)  # e.g. named photo.jpg
    assert not tried  # Ghostscript's plugin was never asked
    assert images.PIL_FORMATS == ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "HEIF", "AVIF")


def test_a_refused_input_is_an_error_row():
    with pytest.raises(ImageError, match="encrypted"):
        load_image(images.Refused("encrypted"))
    _, x, errors = next(iter_image_batches([images.Refused("too big")], 32, (0.5,) * 3, (0.5,) * 3, batch_size=1))
    assert errors == {0: "too big"} and x.shape == (0, 3, 32, 32)


def test_preprocess_shape_and_normalisation():
    x = preprocess(Image.new("RGB", (500, 375), (255, 255, 255)), 224, (0.5,) * 3, (0.5,) * 3)
    assert x.shape == (3, 224, 224) and float(x.min()) == pytest.approx(1.0)


def _rel(found, root) -> list[str]:
    return [p.relative_to(root).as_posix() for p in found]


def test_find_images_leaves_out_hidden_files_and_folders(tmp_path):
    """Regression: the command line's finder (collect_images) listed hidden files, so ._a.jpg, the AppleDouble file
    macOS writes beside a photo on a USB disk or a network share, got a row (an error, or a caption of nothing)."""
    root = tmp_path / "lib"
    for rel in ("a.jpg", "sub/b.png", "sub/deeper/c.png", ".hidden.png", ".thumbs/t.png", "sub/.cache/d.png"):
        make_image(root / rel, "red", "square")
    (root / "._a.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # AppleDouble: metadata, no picture
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "notes.txt").write_text("not an image")
    assert _rel(images.find_images(root), root) == ["a.jpg", "sub/b.png", "sub/deeper/c.png"]
    assert _rel(images.find_images(root, recursive=False), root) == ["a.jpg"]
    assert _rel(collect_images([root]), root) == ["a.jpg", "sub/b.png", "sub/deeper/c.png"]
    # only names below the folder count: a library kept in a hidden folder is found
    assert _rel(images.find_images(root / ".thumbs"), root / ".thumbs") == ["t.png"]


def test_find_images_include_and_exclude_patterns(tmp_path):
    root = tmp_path / "lib"
    for rel in ("a.png", "a_thumb.png", "b.jpg", "2023/e.jpg", "2024/c.jpg", "2024/raw/d.jpg"):
        make_image(root / rel, "blue", "stripe")
    # a pattern matches the path below the folder or the file name; fnmatch's * crosses folders
    assert _rel(images.find_images(root, include=["*.jpg"]), root) == ["2023/e.jpg", "2024/c.jpg", "2024/raw/d.jpg",
                                                                        "b.jpg"]
    assert _rel(images.find_images(root, include=["2024/*"]), root) == ["2024/c.jpg", "2024/raw/d.jpg"]
    assert _rel(images.find_images(root, exclude=["*_thumb.*", "**/raw/*"]), root) == [
        "2023/e.jpg", "2024/c.jpg", "a.png", "b.jpg"]
    assert _rel(images.find_images(root, include=["*.png"], exclude=["a_*"]), root) == ["a.png"]
    with pytest.raises(FileNotFoundError):
        images.find_images(root / "missing")


def test_collect_images_keeps_named_files_and_applies_the_rules_in_folders(tmp_path):
    make_image(tmp_path / "a" / "b" / "x.png", "red", "square")
    make_image(tmp_path / "a" / "x_thumb.png", "red", "square")
    make_image(tmp_path / "a" / ".x.png", "red", "square")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    named = tmp_path / "named.txt"
    named.write_text("not an image")  # named by the user: kept, so that its row says why it is not captioned
    hidden = make_image(tmp_path / ".named.png", "red", "square")  # named by the user: asked for, so kept
    found = collect_images([named, tmp_path / "a", hidden, tmp_path / "a" / "b" / "x.png"], exclude=["*_thumb.*"])
    assert _rel(found, tmp_path) == [".named.png", "a/b/x.png", "named.txt"]  # sorted by path as text, once each
    assert _rel(collect_images([tmp_path / "a"], recursive=False), tmp_path) == ["a/x_thumb.png"]


def test_iter_image_batches_reports_bad_items_alone(tmp_path):
    good = make_image(tmp_path / "g.png", "red", "square")
    batches = list(iter_image_batches([good, b"", good], 32, (0.5,) * 3, (0.5,) * 3, batch_size=2))
    (idx1, x1, err1), (idx2, x2, err2) = batches
    assert idx1 == [0] and list(err1) == [1] and x1.shape == (1, 3, 32, 32)
    assert idx2 == [2] and not err2


# ------------------------------------------------------------------ a partly unzipped COCO, train/val overlap

def _coco_split(root, split, listed, present, first_id=0):
    """captions_<split>2017.json listing `listed` images, of which the first `present` are on disk."""
    images, anns = [], []
    for k in range(listed):
        name = f"{first_id + k:012d}.jpg"
        if k < present:
            make_image(root / "images" / f"{split}2017" / name, "red", "square", seed=first_id + k)
        images.append({"id": first_id + k, "file_name": name, "width": 48, "height": 48})
        anns.append({"id": first_id + k, "image_id": first_id + k, "caption": "a red square"})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "info": {}, "licenses": []}))
    return root


def test_a_partly_unzipped_coco_is_a_problem_unless_missing_images_are_allowed(tmp_path):
    root = _coco_split(tmp_path / "coco", "train", 5000, 11)
    _coco_split(root, "val", 40, 40, first_id=10_000)
    info = inspect_dataset(root)
    assert not info.ok and info.splits == {"train": 11, "val": 40}
    assert info.problems[0].startswith("train2017: 11 of 5,000 images found (is the unzip complete?)")
    assert "--allow-missing" in info.problems[0]
    allowed = inspect_dataset(root, allow_missing=True)
    assert allowed.ok and allowed.notes[0].startswith("train2017: 11 of 5,000 images found (is the unzip complete?)")


def test_up_to_one_percent_missing_is_a_note_not_a_problem(tmp_path):
    root = _coco_split(tmp_path / "coco", "train", 100, 99)
    _coco_split(root, "val", 10, 10, first_id=1000)
    info = inspect_dataset(root)
    assert info.ok and info.notes == ["train2017: 99 of 100 images found; the 1 missing are left out"]
    root2 = _coco_split(tmp_path / "coco2", "train", 100, 98)
    _coco_split(root2, "val", 10, 10, first_id=1000)
    assert "98 of 100 images found (is the unzip complete?)" in inspect_dataset(root2).problems[0]


def test_missing_report_threshold():
    assert datasets.missing_report("x", 100, 0) == ([], [])
    assert datasets.missing_report("x", 99, 1)[0] == []  # exactly 1%
    assert datasets.missing_report("x", 98, 2)[0] != []
    assert datasets.missing_report("x", 98, 2, allow_missing=True)[0] == []


def test_train_and_val_sharing_images_is_reported(tmp_path):
    root = _coco_split(tmp_path / "coco", "train", 6, 6)
    _coco_split(root, "val", 4, 4, first_id=100)
    assert inspect_dataset(root).notes == []  # distinct images: nothing to say
    # a val split that lists two of the training images (copied into val2017: same name, same bytes)
    shared = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    for k in (2, 3):
        name = f"{k:012d}.jpg"
        (root / "images" / "val2017" / name).write_bytes((root / "images" / "train2017" / name).read_bytes())
        shared["images"].append({"id": k, "file_name": name, "width": 48, "height": 48})
        shared["annotations"].append({"id": 500 + k, "image_id": k, "caption": "a red square"})
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(shared))
    info = inspect_dataset(root)
    assert info.ok and len(info.notes) == 1
    assert info.notes[0].startswith("2 of the 6 val2017 images are also in train2017 (e.g. 000000000002.jpg)")
    train, _ = load_split(root, "train")
    val, _ = load_split(root, "val")
    assert [p.name for p in datasets.shared_images(train, val)] == ["000000000002.jpg", "000000000003.jpg"]


# ----------------------------------------------------------------------------------- iPhone photos: HEIC, AVIF

def _upright(img):
    """The phone photo decoded as it is shown: 20 x 40, red on top, blue below."""
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0]
    return True


@pytest.mark.parametrize("suffix", [".heic", ".heif", ".avif"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_heic_and_avif_decode_turned_as_their_exif_says(tmp_path, suffix, orientation):
    path = make_phone_photo(tmp_path / f"IMG_0001{suffix}", orientation)
    reference = load_image(make_phone_photo(tmp_path / "ref.jpg", orientation))  # the JPEG path, tested above
    for source in (path, path.read_bytes()):
        img = load_image(source)
        assert img.size == reference.size
        assert np.abs(np.asarray(img, int) - np.asarray(reference, int)).mean() < 8  # lossy codecs, same picture
    if orientation == 6:
        assert _upright(load_image(path)) and _upright(reference)
    assert images.probe_image(path)[0] == ("AVIF" if suffix == ".avif" else "HEIF")


def test_a_damaged_heic_is_an_error_not_a_crash(tmp_path):
    good = make_phone_photo(tmp_path / "a.heic").read_bytes()
    with pytest.raises(ImageError):
        load_image(good[: len(good) // 2])


def test_folders_and_datasets_find_heic_and_avif(tmp_path):
    folder = tmp_path / "phone"
    names = ["IMG_1.HEIC", "IMG_2.heif", "IMG_3.avif", "IMG_4.jpg"]
    for n in names:
        make_phone_photo(folder / n.replace("HEIC", "heic"), 6).rename(folder / n)
    (folder / "IMG_1.MOV").write_bytes(b"not a photo")
    assert [p.name for p in collect_images([folder])] == sorted(names)
    assert [p.name for p in images.find_images(folder)] == sorted(names)

    # a Flickr-layout dataset of phone photos: listed, found and decoded (upright) like any other
    root = tmp_path / "ds"
    rows = [(n, f"a photo {k}") for k, n in enumerate(names)]
    for n in names:
        make_phone_photo(root / "images" / n, 6)
    (root / "captions.txt").write_text("image,caption\n" + "".join(f"{n},{c}\n" for n, c in rows))
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names) + "\n")
    items, missing = load_split(root, "train")
    assert missing == 0 and [it.path.name for it in items] == sorted(names)
    idx, x, errors = next(iter_image_batches([it.path for it in items], 32, (0.5,) * 3, (0.5,) * 3, 8))
    assert idx == [0, 1, 2, 3] and not errors and x.shape == (4, 3, 32, 32)


def test_files_not_read_say_what_they_are():
    assert images.not_read_reason("IMG_1.HEIC") is None and images.not_read_reason("x.avif") is None
    assert "video" in images.not_read_reason("IMG_1.MOV") and "RAW" in images.not_read_reason("DSC_1.NEF")
    assert images.not_read_reason("notes.txt").startswith("not an image file (.txt)")
    assert "HEIC" in images.not_read_reason("README") and "no extension" in images.not_read_reason("README")
