"""Captions written into JPEG and PNG metadata: read back with Pillow, other metadata kept, pixels unchanged."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.caption import imagemeta
from core.caption.imagemeta import MetadataError, read_alt_text, read_caption, write_caption

TEXT = "un café près de l'eau <b> & “quotes”"


def photo(path, fmt, exif=None, **save):
    arr = np.random.default_rng(1).integers(0, 255, (40, 56, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    if exif is not None:
        save["exif"] = exif.tobytes()
    img.save(path, format=fmt, **save)
    return path


def pixels(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).copy()


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_caption_is_written_read_back_and_pixels_are_identical(tmp_path, fmt, suffix):
    path = photo(tmp_path / f"p{suffix}", fmt)
    before, data_before = pixels(path), path.read_bytes()
    write_caption(path, "first caption")
    write_caption(path, TEXT)  # the second write replaces the first, it does not add a second packet
    assert (pixels(path) == before).all()
    assert read_caption(path) == TEXT and read_alt_text(path) == TEXT
    with Image.open(path) as img:
        xmp = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
        xmp = xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp
        assert xmp.count("AltTextAccessibility>") == 2 and "first caption" not in xmp  # one opening, one closing tag
        if fmt == "PNG":
            assert img.text["Description"] == TEXT
        else:
            assert img.getexif()[0x010E].encode("latin-1").decode("utf-8") == TEXT
    if fmt == "JPEG":  # the compressed image data is the same bytes, not a re-encoding
        assert data_before[data_before.index(b"\xff\xda"):] == path.read_bytes()[path.read_bytes().index(b"\xff\xda"):]


def test_jpeg_keeps_its_other_exif_and_xmp(tmp_path):
    import pyexiv2

    exif = Image.Exif()
    exif[0x0110] = "Camera X"  # Model
    exif.get_ifd(0x8769)[0x9003] = "2021:05:04 10:11:12"  # DateTimeOriginal, in the Exif sub-directory
    path = photo(tmp_path / "p.jpg", "JPEG", exif=exif)
    other = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/></rdf:RDF>'
             '</x:xmpmeta>')
    write_caption(path, "old")  # then another tool's XMP packet takes the place of ours
    with pyexiv2.Image(str(path)) as img:
        img.modify_raw_xmp(other)
    write_caption(path, TEXT)
    with Image.open(path) as img:
        ex = img.getexif()
        assert ex[0x0110] == "Camera X" and ex.get_ifd(0x8769)[0x9003] == "2021:05:04 10:11:12"
        assert b'Rating="4"' in img.info["xmp"] or b"Rating>4<" in img.info["xmp"]
    assert read_caption(path) == TEXT


def test_png_keeps_its_other_chunks(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "me")
    path = photo(tmp_path / "p.png", "PNG", pnginfo=info)
    write_caption(path, "ünïcode ✓ caption")  # not Latin-1: goes into an iTXt chunk
    with Image.open(path) as img:
        assert img.text["Author"] == "me" and img.text["Description"] == "ünïcode ✓ caption"


def test_other_formats_and_damaged_files_are_refused_in_plain_words(tmp_path):
    webp = photo(tmp_path / "p.webp", "WEBP")
    with pytest.raises(MetadataError, match="JPEG and PNG"):
        write_caption(webp, "x")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo(tmp_path / "whole.jpg", "JPEG").read_bytes()[:30])
    with pytest.raises(MetadataError, match="damaged"):
        write_caption(cut, "x")
    assert cut.stat().st_size == 30  # nothing was written


# ------------------------------------------------------------------ issue 20: never harm a person's photos

def raw_xmp(path):
    import pyexiv2

    with pyexiv2.Image(str(path)) as img:
        return img.read_raw_xmp()


def xmp_of(path):
    import pyexiv2

    with pyexiv2.Image(str(path)) as img:
        return img.read_xmp()


PERSON = "Grandma's 80th birthday, Lisbon 2019"
PERSON_XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
              'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:foo="http://foo.example/ns/" foo:Bar="1">'
              '<dc:description><rdf:Alt><rdf:li xml:lang="pt-PT">{text}</rdf:li></rdf:Alt></dc:description>'
              '<lr:hierarchicalSubject><rdf:Bag><rdf:li>family|grandma</rdf:li></rdf:Bag></lr:hierarchicalSubject>'
              '</rdf:Description></rdf:RDF></x:xmpmeta>')


def with_person_text(path, where):
    """A photo whose `where` field holds a person's words, written by another tool (exiv2 or Pillow)."""
    import pyexiv2

    if where == "png-description":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Description", PERSON)
        return photo(path, "PNG", pnginfo=info)
    if where == "exif":
        exif = Image.Exif()
        exif[0x010E] = PERSON
        return photo(path, "JPEG", exif=exif)
    photo(path, "JPEG")
    with pyexiv2.Image(str(path)) as img:
        if where == "iptc":
            img.modify_iptc({"Iptc.Application2.Caption": PERSON})
        elif where == "xmp-pt":
            img.modify_raw_xmp(PERSON_XMP.format(text=PERSON))
        else:
            img.modify_xmp({"Xmp.iptc.AltTextAccessibility": {'lang="x-default"': PERSON}})
    return path


@pytest.mark.parametrize("where", ["xmp-pt", "alt-text", "exif", "iptc", "png-description"])
def test_skip_never_replaces_a_description_a_person_wrote(tmp_path, where):
    path = with_person_text(tmp_path / ("p.png" if where.startswith("png") else "p.jpg"), where)
    before = path.read_bytes()
    assert imagemeta.has_description(path) and imagemeta.has_person_description(path)
    with pytest.raises(imagemeta.KeptDescription, match="already has a description"):
        write_caption(path, "a red square", existing="skip")
    assert path.read_bytes() == before


@pytest.mark.parametrize("where", ["xmp-pt", "exif", "iptc", "png-description"])
def test_overwrite_keeps_the_old_text_recoverable_in_the_xmp(tmp_path, where):
    path = with_person_text(tmp_path / ("p.png" if where.startswith("png") else "p.jpg"), where)
    write_caption(path, "a red square", existing="overwrite")
    write_caption(path, "a blue square", existing="overwrite")  # our own caption replaced: the person's stays
    xmp = xmp_of(path)
    assert read_caption(path) == "a blue square" and read_alt_text(path) == "a blue square"
    kept = {k: v for k, v in xmp.items() if k.startswith("Xmp.capt.Previous")}
    assert PERSON in str(kept), kept
    if where == "xmp-pt":
        assert kept["Xmp.capt.PreviousDescription"] == {'lang="pt-PT"': PERSON}
    assert not imagemeta.has_person_description(path)  # our text now; a rerun with skip leaves it


def test_xmp_namespace_prefixes_and_other_properties_are_kept(tmp_path):
    path = with_person_text(tmp_path / "p.jpg", "xmp-pt")
    write_caption(path, TEXT)
    xmp = raw_xmp(path)
    assert 'xmlns:foo="http://foo.example/ns/"' in xmp and 'foo:Bar="1"' in xmp and "ns0:" not in xmp
    assert "lr:hierarchicalSubject" in xmp and "family|grandma" in xmp


def test_camera_thumbnail_and_makernote_survive(tmp_path):
    import pyexiv2
    from exif_fixtures import CANON_IMAGE_TYPE, camera_exif, jpeg_with_exif, tiny_jpeg

    thumb = tiny_jpeg(3)
    path = tmp_path / "IMG_0001.jpg"
    path.write_bytes(jpeg_with_exif(camera_exif(thumb)))  # no description yet: writing it grows IFD0
    write_caption(path, "a much longer caption than any camera writes, which moves everything after IFD0")
    with pyexiv2.Image(str(path)) as img:
        assert img.read_thumbnail() == thumb  # IFD1 kept
        exif = img.read_exif()
    assert exif["Exif.Canon.ImageType"] == CANON_IMAGE_TYPE.rstrip(b"\0").decode()  # MakerNote offsets still right
    assert exif["Exif.Image.ImageDescription"].startswith("a much longer caption")


def test_an_unknown_makernote_is_not_moved(tmp_path):
    """exiv2 cannot re-encode a MakerNote it does not know; then only the XMP gets the caption."""
    from exif_fixtures import camera_exif, jpeg_with_exif, tiny_jpeg

    path = tmp_path / "p.jpg"
    exif = camera_exif(tiny_jpeg(3), make=b"Acme")
    path.write_bytes(jpeg_with_exif(exif))
    write_caption(path, "a caption")
    assert read_caption(path) == "a caption" and exif in path.read_bytes()  # the EXIF block, byte for byte


def test_a_file_still_being_saved_is_left_alone(tmp_path):
    """Another program writes the photo in two halves; our write, between them, must not replace it."""
    import threading

    full = photo(tmp_path / "src.jpg", "JPEG").read_bytes()
    path = tmp_path / "p.jpg"
    half_written, go_on = threading.Event(), threading.Event()

    def other_program():
        with open(path, "wb") as f:
            f.write(full[: len(full) // 2])
            f.flush()
            half_written.set()
            go_on.wait(10)
            f.write(full[len(full) // 2:])

    t = threading.Thread(target=other_program)
    t.start()
    half_written.wait(10)
    try:
        with pytest.raises(MetadataError, match="incomplete|changed"):
            write_caption(path, "a caption")
    finally:
        go_on.set()
        t.join()
    assert path.read_bytes() == full  # the other program's file, whole


def test_a_file_changed_while_its_caption_is_made_is_left_alone(tmp_path, monkeypatch):
    path = photo(tmp_path / "p.jpg", "JPEG")
    theirs = photo(tmp_path / "theirs.jpg", "JPEG", quality=50).read_bytes()
    real = imagemeta.with_caption

    def saved_meanwhile(data, text, existing="overwrite"):
        out = real(data, text, existing)
        path.write_bytes(theirs)  # another program saves its edit now
        return out

    monkeypatch.setattr(imagemeta, "with_caption", saved_meanwhile)
    with pytest.raises(MetadataError, match="another program changed"):
        write_caption(path, "a caption")
    assert path.read_bytes() == theirs


def test_a_replaced_photo_is_refused_by_its_identity(tmp_path):
    path = photo(tmp_path / "p.jpg", "JPEG")
    seen = imagemeta.identity(path)
    photo(tmp_path / "p.jpg", "JPEG", quality=40)  # another photo under the same name
    before = path.read_bytes()
    with pytest.raises(MetadataError, match="changed after it was captioned"):
        write_caption(path, "the old photo's caption", expect=seen)
    assert path.read_bytes() == before
    write_caption(path, "its own caption", expect=imagemeta.identity(path))
    assert read_caption(path) == "its own caption"


def test_mode_owner_xattrs_and_mtime_are_kept(tmp_path):
    import os

    path = photo(tmp_path / "p.jpg", "JPEG")
    os.chmod(path, 0o664)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    try:
        os.setxattr(path, "user.rating", b"5")
        xattrs = True
    except (OSError, AttributeError):
        xattrs = False
    st = os.stat(path)
    write_caption(path, "a caption")
    now = os.stat(path)
    assert read_caption(path) == "a caption"
    assert (now.st_mode & 0o7777, now.st_uid, now.st_gid) == (0o664, st.st_uid, st.st_gid)
    assert now.st_mtime_ns == st.st_mtime_ns
    if xattrs:
        assert os.getxattr(path, "user.rating") == b"5"
    write_caption(path, "another", keep_mtime=False)
    assert os.stat(path).st_mtime_ns != st.st_mtime_ns


def test_read_only_photos_are_refused(tmp_path):
    import os

    path = photo(tmp_path / "p.jpg", "JPEG")
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(MetadataError, match="write-protected"):
        write_caption(path, "a caption")
    assert path.read_bytes() == before and os.stat(path).st_mode & 0o777 == 0o444


def test_symlinks_are_written_through_and_hard_links_kept(tmp_path):
    import os

    real = photo(tmp_path / "real.jpg", "JPEG")
    link = tmp_path / "link.jpg"
    link.symlink_to(real)
    write_caption(link, "through the link")
    assert link.is_symlink() and read_caption(real) == "through the link"

    first = photo(tmp_path / "first.jpg", "JPEG")
    second = tmp_path / "second.jpg"
    os.link(first, second)
    write_caption(second, "one file, two names")
    assert os.stat(first).st_ino == os.stat(second).st_ino and os.stat(first).st_nlink == 2
    assert read_caption(first) == "one file, two names"
    assert not list(tmp_path.glob(".*caption-backup"))


def test_xmp_sidecar_is_merged_and_the_photo_untouched(tmp_path):
    path = photo(tmp_path / "p.jpg", "JPEG")
    before = path.read_bytes()
    side = imagemeta.write_xmp_sidecar(path, "a caption")
    assert side.name == "p.jpg.xmp" and path.read_bytes() == before
    assert imagemeta.read_xmp_sidecar(path) == {"ours": "a caption"}
    lightroom = tmp_path / "q.xmp"  # an existing sidecar of another tool, in Lightroom's naming
    photo(tmp_path / "q.jpg", "JPEG")
    lightroom.write_text(PERSON_XMP.format(text=PERSON), encoding="utf-8")
    with pytest.raises(imagemeta.KeptDescription):
        imagemeta.write_xmp_sidecar(tmp_path / "q.jpg", "a caption", existing="skip")
    assert imagemeta.write_xmp_sidecar(tmp_path / "q.jpg", "a caption") == lightroom
    text = lightroom.read_text(encoding="utf-8")
    assert "family|grandma" in text and 'foo:Bar="1"' in text and PERSON in text  # merged; the old text kept


@pytest.mark.parametrize("where", ["xmp-pt", "exif", "iptc", "png-description"])
def test_the_skip_check_reads_the_metadata_without_the_image_data(tmp_path, where):
    path = with_person_text(tmp_path / ("p.png" if where.startswith("png") else "p.jpg"), where)
    head = imagemeta.metadata_bytes(path)
    assert len(head) < path.stat().st_size
    assert imagemeta.descriptions(head) == imagemeta.descriptions(path.read_bytes()) != {}


def test_another_users_photo_is_written_in_place_so_it_stays_theirs(tmp_path, monkeypatch):
    import os

    path = photo(tmp_path / "p.jpg", "JPEG")
    inode = os.stat(path).st_ino
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1)  # we are not its owner (nor root)
    write_caption(path, "a caption")
    assert os.stat(path).st_ino == inode and read_caption(path) == "a caption"
    assert not list(tmp_path.glob(".*caption-backup"))


def test_a_raw_files_xmp_sidecar_is_not_taken_over_by_the_jpeg_beside_it(tmp_path):
    jpeg = photo(tmp_path / "IMG_1.JPG", "JPEG")
    (tmp_path / "IMG_1.CR2").write_bytes(b"raw")
    lightroom = tmp_path / "IMG_1.xmp"
    lightroom.write_text(PERSON_XMP.format(text=PERSON), encoding="utf-8")
    before = lightroom.read_bytes()
    assert imagemeta.write_xmp_sidecar(jpeg, "a caption") == tmp_path / "IMG_1.JPG.xmp"
    assert lightroom.read_bytes() == before


def test_a_safety_copy_left_by_an_interrupted_write_stops_the_next_one(tmp_path):
    path = photo(tmp_path / "p.jpg", "JPEG")
    (tmp_path / ".p.jpg.caption-backup").write_bytes(path.read_bytes())  # a crash while writing in place
    with pytest.raises(MetadataError, match="interrupted write"):
        write_caption(path, "a caption")
