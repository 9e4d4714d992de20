"""core.train.augment: mirrored and cropped views of the training photos, and captions that follow the mirror."""
import csv

import numpy as np
import torch

from conftest import make_image, tiny_train_config
from core.train.augment import apply_view, crop_box, epoch_views, is_flipped, swap_table


def test_a_mirrored_view_swaps_left_and_right_and_nothing_else():
    stoi = {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "a": 4, "left": 5, "right": 6, "hand": 7}
    table = swap_table(stoi, len(stoi))
    caption = torch.tensor([1, 4, 5, 7, 6, 2, 0])
    assert table[caption].tolist() == [1, 4, 6, 7, 5, 2, 0]
    assert table[table[caption]].tolist() == caption.tolist()
    assert swap_table({"a": 4}, 6).tolist() == list(range(6))  # a vocabulary without the words: unchanged


def test_views_are_the_photo_its_mirror_and_fixed_crops():
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(apply_view(images, ["a.jpg", "b.jpg"], 0), images)
    assert torch.equal(apply_view(images, ["a.jpg", "b.jpg"], 1), images.flip(-1))
    assert not is_flipped(2) and is_flipped(3)
    for view in (2, 3, 4):
        top, left, h, w = crop_box("a.jpg", view)
        assert 0 <= top and 0 <= left and top + h <= 1 and left + w <= 1 and 0.55 <= h * w <= 1.0
        assert crop_box("a.jpg", view) == (top, left, h, w)  # the same view in every run: it can be cached
    cropped = apply_view(images, ["a.jpg", "b.jpg"], 3)
    assert cropped.shape == images.shape and not torch.allclose(cropped, images.flip(-1))
    assert crop_box("a.jpg", 2) != crop_box("b.jpg", 2)
    v = epoch_views(1000, 3, seed=0, epoch=1)
    assert set(v.tolist()) == {0, 1, 2} and np.array_equal(v, epoch_views(1000, 3, seed=0, epoch=1))
    assert not np.array_equal(v, epoch_views(1000, 3, seed=0, epoch=2))


def test_training_on_views_mirrors_the_captions_of_mirrored_photos(tmp_path, monkeypatch):
    """Each photo's caption says "left" or "right"; in each epoch exactly the photos seen mirrored get the other."""
    import core.train.trainer as train

    root = tmp_path / "flickr"
    names = []
    for i, colour in enumerate(["red", "blue", "green", "yellow"] * 2):
        name = f"{colour}{i}.png"
        make_image(root / "images" / name, colour, "square", seed=i)
        names.append(name)
    with open(root / "captions.txt", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption")] + [(n, f"a square on the {'left' if i % 3 else 'right'}")
                                                              for i, n in enumerate(names)])
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(names[:2]) + "\n")
    seen = []
    original_call, original_loss = train.FeatureSource.__call__, train.caption_loss

    def record_call(self, image_ids, device, views=None):
        seen.append({"views": None if views is None else np.asarray(views).tolist(), "images": list(image_ids)})
        return original_call(self, image_ids, device, views)

    def record_loss(model, feats, captions, *args, **kwargs):
        seen[-1]["captions"] = captions.tolist()
        return original_loss(model, feats, captions, *args, **kwargs)

    monkeypatch.setattr(train.FeatureSource, "__call__", record_call)
    monkeypatch.setattr(train, "caption_loss", record_loss)
    cfg = tiny_train_config(root, tmp_path, epochs=3, batch_size=4, views=2, val_images=2)
    assert train.run(cfg, tmp_path / "run") is not None
    vocab = train.Vocabulary.load(tmp_path / "run" / "vocab.json")
    left, right = vocab.stoi["left"], vocab.stoi["right"]
    items, _ = train.load_split(root, "train")  # the trainer's image indices: this order
    said = [vocab.stoi["left"] if "left" in it.captions[0] else vocab.stoi["right"] for it in items]
    steps = [s for s in seen if "captions" in s]
    assert len(steps) == 3 * 2
    mirrored = 0
    for s in steps:
        assert s["views"] is not None
        for image, view, caption in zip(s["images"], s["views"], s["captions"]):
            other = right if said[image] == left else left
            assert (other if view % 2 else said[image]) in caption
            assert (said[image] if view % 2 else other) not in caption
            mirrored += view % 2
    assert 0 < mirrored < 24
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the plain photos' cache and view 1's
