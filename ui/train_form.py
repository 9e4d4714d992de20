"""The Train page's form: one table of fields (defaults from core.base.config, each explained in plain words), the
values of the last submitted form (kept on disk in the runs folder by core.runs.folder) as the starting values.

To add a setting: one `Field` line in MAIN or ADVANCED, naming a TrainConfig or ModelConfig field; its
default, type and remembered value follow from that name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from core.base.config import (
    ADVANCED_OPTIONS,
    BACKBONE_NAMES,
    DECODER_NAMES,
    DECODERS,
    DEVICES,
    MODEL_KEYS,
    NAME_RULE,
    ModelConfig,
    TrainConfig,
)
from core.base.paths import runs_dir
from core.runs.folder import load_form_values, save_form_values
from ui import warm
from ui.device import device_report_ui


@dataclass(frozen=True)
class Field:
    name: str  # a TrainConfig field, or a ModelConfig one (MODEL_KEYS)
    label: str
    help: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    kind: str = ""  # "" = from the default's type (number, checkbox, text); "slider"; "choice"
    options: tuple = ()
    fmt: str | None = None


DATA = Field("data", "Dataset folder (COCO-2017 or Flickr layout)",
           "The folder with the photos and their captions: a COCO-2017 folder (annotations/captions_*.json and "
           "the image folders) or a Flickr8k/Flickr30k-style folder (the photos and one captions file).")
MAIN = [  # rows of the form under the dataset folder: the device goes last in the first, the model name in the last
    [Field("backbone", "Backbone", "The image network that turns a photo into numbers. efficientnet_lite0 is "
           "the fastest; lite2 (the default model's) sees a little more; the ResNets are bigger and slower.",
           kind="choice", options=BACKBONE_NAMES),
     Field("decoder", "Decoder", "The part that writes the sentence. Attention looks at a different part of "
           "the photo for each word (better captions); Show and Tell sees the photo once (simpler, faster).",
           kind="choice", options=DECODERS)],
    [Field("embed_dim", "Embedding size", "How many numbers describe each word inside the model. Bigger can "
           "tell words apart more finely but needs more photos to learn; 256 suits a few thousand photos.",
           8, 2048, 8),
     Field("hidden_dim", "Hidden size", "The size of the model's memory while it writes a sentence. Bigger "
           "keeps more of the photo and of the words so far in mind, but trains slower and needs more photos.",
           8, 4096, 8),
     Field("min_word_count", "Vocabulary threshold (min. word count)", "Words seen fewer times than this in "
           "the training captions are not learned (the model writes them as unknown). Higher: fewer words, each "
           "learned well; lower: more rare words, each seen too seldom to learn.", 1, 100),
     Field("epochs", "Epochs", "How many times training goes through all the photos. More passes improve the "
           "captions until they stop helping (the default model had 6); each takes as long as the first.",
           1, 200)],
    [Field("batch_size", "Batch size", "Photos per training step. Bigger is faster per photo on a GPU and "
           "needs more memory; 64 works on most computers.", 1, 1024),
     Field("lr", "Learning rate", "How big a correction the model makes after each step. Too big and training "
           "goes wrong (the loss jumps up); too small and it learns slowly. 4e-4 (0.0004) is a safe start.",
           1e-6, 1.0, 1e-4, fmt="%.0e"),
     Field("subset", "Quick run: fraction of the data", "Train on this share of the photos, e.g. 0.05 for a "
           "first try that shows the whole process in minutes; fewer photos make worse captions.",
           0.01, 1.0, kind="slider")],
]
ADVANCED = [
    Field("label_smoothing", "Label smoothing", "Teaches the model not to be over-sure of one word; the default "
          "model used 0.1. 0: off.", 0.0, 0.5, 0.05),
    Field("scst_epochs", "SCST passes over the data (CIDEr reward, after the others)", "SCST (self-critical "
          "training): after the normal epochs, passes in which the model writes captions and is rewarded by how "
          "well they score (CIDEr). Usually a little better scores, several times slower per pass, and less "
          "varied captions. 0: off.", 0, 50),
    Field("val_images", "Validation images", "How many photos kept out of training are captioned after each "
          "epoch to measure progress (the scores in the charts). More: steadier scores, longer epochs.",
          1, 100_000),
    Field("fine_tune", "Fine-tune the backbone too", "Also adjust the image network to captioning. Can help on "
          "big datasets, but much slower (each photo is read again every epoch): needs a GPU."),
    Field("checkpoint_every", "Checkpoint every (steps)", "How often progress is saved, so that Stop, a crash or "
          "a closed laptop loses little; whichever comes first of this and the minutes.", 1, 1_000_000),
    Field("checkpoint_minutes", "... or every (minutes)", "Save at least this often, in minutes.", 0.5, 1440.0),
    Field("attention_dim", "Attention size", "Attention decoder only: the size of the part that decides where "
          "in the photo to look for the next word.", 8, 2048, 8),
    Field("dropout", "Dropout", "The share of the model's connections switched off at random while it trains, so "
          "that it learns general rules instead of memorising the photos; higher helps small datasets.",
          0.0, 0.9, 0.05),
    Field("allow_missing", "Train even when more than 1% of a split's images are missing", "Train on the photos "
          "that are there, e.g. on a COCO folder whose unzip is not finished."),
]
# the decoder/augmentation/fine-tuning options core.base.config lists (one copy of their labels, help and limits)
ADVANCED += [Field(name, label, help_[:1].upper() + help_[1:] + ".", *(limits or (None, None)))
             for name, label, help_, limits in ADVANCED_OPTIONS]


def default_of(name: str):
    return getattr(ModelConfig(), name) if name in MODEL_KEYS else getattr(TrainConfig(), name)


def _fits(f: Field, value, default) -> bool:
    if type(value) is not type(default) and not (isinstance(default, float) and type(value) is int):
        return False
    if f.options:
        return value in f.options
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return (f.low is None or f.low <= value) and (f.high is None or value <= f.high)
    return True


def start_values(root: Path) -> dict:
    """Each field's starting value: the last submitted form's where it still fits the field, else the default."""
    remembered = load_form_values(root)
    out = {}
    for f in all_fields():
        default = default_of(f.name)
        value = remembered.get(f.name, default)
        out[f.name] = type(default)(value) if _fits(f, value, default) else default
    if "data" not in remembered and not any((Path(out["data"]) / "annotations").glob("captions_*.json")):
        out["data"] = ""  # no COCO in cocoapi/: an empty field with an example, not a folder without a dataset
    out["device"] = remembered.get("device") if remembered.get("device") in DEVICES else "auto"
    return out


def widget(where, f: Field, value):
    """One field's widget, its help in plain words; returns the value it holds."""
    key = f"train-{f.name}"
    if f.kind == "choice":
        names = DECODER_NAMES if f.name == "decoder" else {}
        return where.selectbox(f.label, f.options, index=f.options.index(value), help=f.help, key=key,
                               format_func=lambda o: names.get(o, o))
    if f.kind == "slider":
        return where.slider(f.label, f.low, f.high, value, help=f.help, key=key)
    if isinstance(value, bool):
        return where.checkbox(f.label, value, help=f.help, key=key)
    if isinstance(value, str):
        return where.text_input(f.label, value, help=f.help, key=key,
                                placeholder="e.g. /home/me/data/flickr8k" if f.name == "data" else None)
    kind = type(value)
    # No min/max on the widget: Streamlit does not send a typed value outside them, so a run would start with the
    # previous value; core.base.form_ranges refuses it with a message instead (the page checks before starting).
    return where.number_input(f.label, None, None, value, step=kind(f.step) if f.step else None, format=f.fmt,
                              help=f.help, key=key)


def device_choice(where, remembered: str) -> tuple[str, int]:
    """The compute device for the run, with what was found on this computer beside it; and how many processes:
    with several CUDA GPUs, one or all of them (one process each, through torchrun)."""
    device = where.selectbox("Device", DEVICES, index=DEVICES.index(remembered), key="train-device",
                             help="Where training runs. auto: an NVIDIA GPU (CUDA), else an Apple GPU (MPS), "
                             "else the CPU (many times slower).")
    dev = warm.device_info()  # the server's warm-up made one already, unless this is its very first page
    report = device_report_ui(where, report=dev if dev and "error" not in dev else None)
    if report.gpus < 2 or os.name == "nt":  # PyTorch's Windows builds have no NCCL, which several GPUs train over
        return device, 1
    processes = where.selectbox("GPUs", (1, report.gpus),
                                format_func=lambda n: "one GPU" if n == 1 else f"all {n} GPUs",
                                help="All: one training process per GPU (torchrun, DistributedDataParallel); "
                                "the batch size is the total over all of them")
    return device, processes


def all_fields() -> list[Field]:
    return [DATA] + [f for row in MAIN for f in row] + ADVANCED


def train_form() -> dict | None:
    """The run's settings (TrainConfig field names, flat) when the form is submitted, else None. The values
    submitted are remembered (core.runs.folder) and start the form next time, in this or a later session."""
    start = start_values(runs_dir())
    with st.form("train"):
        values = {"data": widget(st, DATA, start["data"])}
        for i, row in enumerate(MAIN):
            cols = st.columns(3 if i == 0 else 4)
            for col, f in zip(cols, row):
                values[f.name] = widget(col, f, start[f.name])
            if i == 0:
                device, processes = device_choice(cols[2], start["device"])
        model_name = cols[3].text_input("Model name", "", placeholder=NAME_RULE, key="train-model_name",
                                        help="The finished model's folder name in models/; empty: one made "
                                        "from the settings and the time.")
        with st.expander("Advanced"):
            for i in range(0, len(ADVANCED), 4):
                for col, f in zip(st.columns(4), ADVANCED[i:i + 4]):
                    values[f.name] = widget(col, f, start[f.name])
        if not st.form_submit_button("Start training", type="primary"):
            return None
    values = {k: type(default_of(k))(v) for k, v in values.items()} | {"device": device}  # the config's types
    save_form_values(runs_dir(), values)
    name = model_name.strip() or f"{values['decoder']}-{values['backbone']}-{pd.Timestamp.now():%Y%m%d-%H%M}"
    return values | {"processes": int(processes), "model_name": name}
