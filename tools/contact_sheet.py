"""A contact sheet of photos with their captions, for a person to judge: PNG pages and a Markdown form.

    python -m core.evaluate --model M --data ../shared/data/flickr8k --split val --captions-out caps.json
    python tools/contact_sheet.py caps.json --out sheets/M [--photos 50] [--seed 0] [--per-page 25]

The photos are chosen by `--seed` from the sorted image names of the captions file, so two models' sheets made
with the same seed show the same photos in the same order (before / after). Writes <out>_1.png, <out>_2.png, ...
(numbered photos, each with its caption under it) and <out>.md, one row per photo with an empty verdict column to
fill in: acceptable (a person would keep the caption as it is), partly right (the main subject right, a detail
wrong), or wrong.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

THUMB = 224  # photo side in the sheet: Flickr8k's copies are 224 x 224
COLUMNS = 5
TEXT_LINES = 4
LINE_HEIGHT = 17
WRAP = 30  # characters per caption line at this font size and photo width
FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "Arial.ttf")


def _font(size: int) -> ImageFont.ImageFont:
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font


def choose(captions: dict[str, str], n: int, seed: int) -> list[str]:
    """n image keys, the same for every captions file of the same images and seed."""
    keys = sorted(captions)
    return random.Random(seed).sample(keys, min(n, len(keys)))


def draw_page(entries: list[tuple[int, Path, str]], title: str) -> Image.Image:
    """entries: (number, photo, caption) -> one page, COLUMNS photos a row, the caption wrapped under each."""
    font, bold = _font(14), _font(16)
    cell_w, cell_h = THUMB + 12, THUMB + 8 + TEXT_LINES * LINE_HEIGHT + 8
    rows = -(-len(entries) // COLUMNS)
    page = Image.new("RGB", (COLUMNS * cell_w + 12, rows * cell_h + 40), "white")
    pen = ImageDraw.Draw(page)
    pen.text((12, 10), title, fill="black", font=bold)
    for k, (number, photo, caption) in enumerate(entries):
        x, y = 12 + (k % COLUMNS) * cell_w, 40 + (k // COLUMNS) * cell_h
        try:
            with Image.open(photo) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMB, THUMB))
                page.paste(im, (x, y))
        except OSError as e:  # a missing photo gets a grey square and the reason, not a crashed sheet
            pen.rectangle((x, y, x + THUMB, y + THUMB), fill="#ccc")
            pen.text((x + 6, y + THUMB // 2), f"cannot read: {type(e).__name__}", fill="black", font=font)
        pen.rectangle((x, y, x + 30, y + 20), fill="black")
        pen.text((x + 4, y + 2), str(number), fill="white", font=font)
        lines = textwrap.wrap(caption, WRAP)[:TEXT_LINES]
        for j, line in enumerate(lines):
            pen.text((x, y + THUMB + 6 + j * LINE_HEIGHT), line, fill="black", font=font)
    return page


def make_sheets(captions_file: Path, out: Path, photos: int = 50, seed: int = 0, per_page: int = 25) -> list[Path]:
    """-> the files written (PNG pages, then the Markdown form)."""
    data = json.loads(Path(captions_file).read_text(encoding="utf-8"))
    captions = data["captions"] if "captions" in data else data  # core.evaluate.run's file, or {image: caption}
    if not captions:
        raise ValueError(f"{captions_file} holds no captions")
    keys = choose(captions, photos, seed)
    label = data.get("model", Path(captions_file).stem) if isinstance(data.get("model"), str) else Path(captions_file).stem
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for page, start in enumerate(range(0, len(keys), per_page), 1):
        entries = [(start + i + 1, Path(k), captions[k]) for i, k in enumerate(keys[start:start + per_page])]
        path = out.with_name(f"{out.name}_{page}.png")
        draw_page(entries, f"{Path(label).name}: photos {start + 1}-{start + len(entries)} of {len(keys)} "
                           f"(seed {seed})").save(path)
        written.append(path)
    form = out.with_name(f"{out.name}.md")
    rows = "\n".join(f"| {i} | {Path(k).name} | {captions[k]} | |" for i, k in enumerate(keys, 1))
    form.write_text(f"# {Path(label).name}: {len(keys)} photos (seed {seed})\n\nVerdict: acceptable / partly / wrong.\n\n"
                    f"| # | photo | caption | verdict |\n|---|---|---|---|\n{rows}\n", encoding="utf-8")
    return written + [form]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("captions", type=Path, help="JSON from `python -m core.evaluate --captions-out`")
    p.add_argument("--out", type=Path, required=True, help="path prefix of the pages and the form")
    p.add_argument("--photos", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-page", type=int, default=25)
    args = p.parse_args(argv)
    try:
        for path in make_sheets(args.captions, args.out, args.photos, args.seed, args.per_page):
            print(path)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
