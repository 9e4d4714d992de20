"""Build core/data/object_words.json: each ImageNet-1k class -> the plain noun a caption would use.

    python tools/build_object_words.py            # rewrites core/data/object_words.json

ImageNet's 1000 classes are fine-grained (118 dog breeds, 5 domestic cats, 9 sports balls); a caption says
"dog", "cat", "ball". The class names and WordNet definitions come from timm (offline). The rules below are
the grouping, checked by hand: animal classes by their contiguous index ranges (ImageNet orders classes by
the WordNet hierarchy, so each range is one kind of animal), then hand-written nouns for the classes whose
first name is not what people say, then the last word of the first name ("analog clock" -> "clock").
`guide: false` marks classes whose noun must not be forced into a caption: clothing and people (ImageNet
has no "person"; its "jersey" fires on every sports photo), and names with another everyday meaning
("orange" the colour, "crane" the bird or the machine, "hotdog").
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "core" / "data" / "object_words.json"

RANGES = [  # (first, last, noun): inclusive index ranges of ImageNet-1k
    (0, 1, "fish"), (2, 4, "shark"), (5, 6, "ray"), (7, 8, "chicken"), (9, 24, "bird"), (25, 29, "salamander"),
    (30, 32, "frog"), (33, 37, "turtle"), (38, 48, "lizard"), (49, 49, "crocodile"), (50, 50, "alligator"),
    (52, 68, "snake"), (70, 77, "spider"), (80, 96, "bird"), (97, 98, "duck"), (101, 101, "elephant"),
    (118, 121, "crab"), (122, 123, "lobster"), (125, 125, "crab"), (127, 146, "bird"), (147, 148, "whale"),
    (151, 268, "dog"), (269, 271, "wolf"), (273, 275, "dog"), (277, 280, "fox"), (281, 285, "cat"),
    (288, 289, "leopard"), (294, 297, "bear"), (300, 307, "beetle"), (319, 320, "dragonfly"),
    (321, 326, "butterfly"), (330, 332, "rabbit"), (341, 343, "pig"), (348, 349, "sheep"), (351, 353, "antelope"),
    (368, 369, "ape"), (370, 384, "monkey"), (385, 386, "elephant"), (389, 397, "fish"),
]

NOUNS = {  # index: noun, where neither the range nor the name's last word is what a caption says
    24: "owl", 22: "eagle", 9: "ostrich", 84: "peacock", 87: "parrot", 88: "parrot", 89: "parrot", 90: "parrot",
    94: "hummingbird", 96: "toucan", 99: "goose", 100: "swan", 130: "flamingo", 144: "pelican", 145: "penguin",
    150: "seal", 287: "lynx", 286: "cougar", 299: "meerkat", 335: "squirrel", 339: "horse", 345: "cow",
    346: "buffalo", 350: "goat", 354: "camel", 388: "panda", 387: "red panda",
    404: "airplane", 895: "airplane", 405: "airship", 436: "car", 468: "taxi", 511: "car", 627: "car", 751: "car",
    817: "car", 661: "car", 717: "truck", 656: "van", 675: "van", 734: "van", 654: "bus", 779: "bus", 874: "bus",
    555: "fire truck", 569: "truck", 864: "truck", 867: "truck", 444: "bicycle", 671: "bike", 665: "scooter",
    670: "scooter", 466: "train", 547: "train", 820: "train", 565: "train", 705: "train", 829: "tram",
    484: "boat", 510: "ship", 554: "boat", 576: "boat", 625: "boat", 628: "ship", 780: "boat", 814: "boat",
    871: "boat", 914: "boat", 403: "ship", 657: "rocket", 744: "rocket", 812: "space shuttle", 408: "car",
    409: "clock", 530: "clock", 892: "clock", 504: "mug", 967: "coffee", 550: "coffee maker", 505: "coffeepot",
    429: "ball", 430: "ball", 522: "ball", 574: "ball", 722: "ball", 768: "ball", 805: "ball", 852: "ball",
    890: "ball", 450: "sled", 537: "sled", 703: "bench", 559: "chair", 765: "chair", 423: "chair", 831: "couch",
    532: "table", 487: "phone", 528: "phone", 707: "phone", 508: "keyboard", 919: "sign", 489: "fence",
    716: "fence", 912: "fence", 825: "wall", 821: "bridge", 839: "bridge", 888: "bridge", 672: "tent",
    402: "guitar", 546: "guitar", 579: "piano", 881: "piano", 822: "drum", 776: "saxophone", 513: "trumpet",
    933: "burger", 934: "hot dog", 948: "apple", 970: "mountain", 973: "reef", 975: "lake", 976: "cliff",
    977: "beach", 978: "beach", 983: "diver", 981: "baseball player", 982: "groom", 412: "trash can",
    851: "television", 664: "monitor", 837: "sunglasses", 836: "sunglasses", 608: "jeans", 638: "swimsuit",
    639: "swimsuit", 842: "swimming trunks", 726: "hand plane", 517: "crane", 134: "bird", 850: "teddy bear",
    620: "laptop", 590: "tablet", 527: "computer", 782: "screen", 459: "bra", 920: "traffic light",
    609: "jeep", 603: "cart", 612: "rickshaw", 690: "cart", 428: "wheelbarrow", 791: "shopping cart",
    757: "camper", 660: "trailer", 586: "tank", 847: "tank", 413: "rifle", 764: "rifle",
    928: "ice cream", 929: "popsicle", 930: "bread", 963: "pizza", 966: "wine", 907: "bottle", 440: "bottle",
    737: "bottle", 898: "bottle", 441: "glass", 572: "glass", 809: "bowl", 659: "bowl", 923: "plate",
}

NO_GUIDE = {  # clothing, people, and names with another everyday meaning
    399, 400, 411, 433, 439, 443, 445, 451, 452, 457, 459, 465, 474, 501, 502, 514, 515, 518, 552, 560, 568,
    578, 601, 608, 610, 614, 615, 617, 630, 638, 639, 652, 655, 658, 667, 689, 697, 735, 770, 774, 775, 793,
    796, 806, 808, 824, 834, 841, 842, 869, 887, 903, 906, 981, 982, 983, 724,
    950, 951, 517, 134, 456, 553, 606, 673, 726, 769, 881, 885, 911, 916, 989, 998, 999, 934, 588, 714, 733,
    458, 488, 506, 616, 677, 680, 723, 782, 800, 844, 853, 884, 908, 971, 987, 663, 741, 664,
}

SYNONYMS = {  # other words a caption uses for the same noun (plurals are added automatically)
    "dog": ["puppy", "puppies"], "cat": ["kitten", "kittens", "kitty"], "airplane": ["plane", "planes", "jet"],
    "bike": ["bicycle", "bicycles"], "bicycle": ["bike", "bikes"], "car": ["automobile"],
    "boat": ["ship", "canoe", "kayak"], "ship": ["boat", "boats"], "rocket": ["missile", "shuttle"],
    "coffee": ["espresso", "cup", "mug"], "mug": ["cup", "cups", "coffee"], "cup": ["mug", "coffee"],
    "couch": ["sofa"], "phone": ["cellphone", "telephone"], "television": ["tv"], "ape": ["monkey", "gorilla"],
    "monkey": ["monkeys", "ape"], "rabbit": ["bunny"], "beach": ["ocean", "shore", "sand"], "lake": ["water"],
    "mountain": ["mountains", "hill"], "cliff": ["rock", "rocks"], "horse": ["pony"], "cow": ["cattle", "bull"],
    "sheep": ["lamb", "lambs"], "chicken": ["rooster", "hen"], "duck": ["ducks"], "fish": ["fishes"],
    "burger": ["hamburger", "sandwich"], "bread": ["loaf"], "wine": ["glass"],
}


def plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def build() -> dict:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    by_range = {i: noun for first, last, noun in RANGES for i in range(first, last + 1)}
    classes = []
    for i in range(info.num_classes()):
        label = info.index_to_description(i)  # "tabby, tabby cat"
        first = label.split(",")[0].strip()
        noun = NOUNS.get(i) or by_range.get(i) or first.lower().split()[-1]
        classes.append({"index": i, "synset": info.index_to_label_name(i), "label": label,
                        "noun": noun, "guide": i not in NO_GUIDE})
    nouns = sorted({c["noun"] for c in classes})
    words = {n: sorted({n, plural(n), *SYNONYMS.get(n, [])}) for n in nouns if " " not in n}
    return {"about": "ImageNet-1k class -> plain noun; made by tools/build_object_words.py", "classes": classes,
            "words": words}


def main() -> None:
    data = build()
    # one class per line: small, and a reviewer's diff shows exactly which classes changed
    lines = [json.dumps(c, ensure_ascii=False) for c in data["classes"]]
    text = ('{"about": %s,\n"classes": [\n%s\n],\n"words": %s}\n'
            % (json.dumps(data["about"]), ",\n".join(lines), json.dumps(data["words"], indent=0, ensure_ascii=False)))
    json.loads(text)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
