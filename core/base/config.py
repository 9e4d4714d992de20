"""Configuration: the model's hyperparameters (`ModelConfig`, saved as config.json in every bundle), a
training run's (`TrainConfig`, saved as config.json in every run folder, with a ModelConfig inside) and how
captions are decoded (`DecodeOptions`, the options of every caption request).

No torch here: the Train page and core.runs.jobs validate a run's settings before anything heavy loads.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from core.base.paths import COCO_DIR, cache_dir, models_dir, resolve

PRECISIONS = ("auto", "fp32", "bf16")  # decoder training; train_precision says what "auto" picks
DECODERS = ("show_tell", "attention", "transformer")
# Each decoder in words, both for the pages: its name in full (the Train form's choice, after the paper) and the short
# one a sentence uses ("an ensemble of 3 attention decoders", Home and the Caption page).
DECODER_NAMES = {"attention": "Show, Attend and Tell (attention)", "show_tell": "Show and Tell",
                 "transformer": "Transformer"}
DECODER_SHORT_NAMES = {"attention": "attention", "show_tell": "Show-and-Tell", "transformer": "Transformer"}
GRID_DECODERS = ("attention", "transformer")  # read the feature grid (and give attention maps); Show-and-Tell pools it
# The names of core.nn.backbones.BACKBONES (which needs torch to import); tests/test_config.py keeps them equal.
BACKBONE_NAMES = ("efficientnet_lite0", "efficientnet_lite2", "resnet50", "resnet101")
DEVICES = ("auto", "cuda", "mps", "cpu")

# One rule for the names of models and runs: they become folder names on every OS.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,60}")
NAME_RULE = "letters, digits, - and _ (at most 60)"


class ConfigError(ValueError):
    """Settings that cannot make a run; the message lists every problem in plain words."""


def slug(text: str, fallback: str = "run") -> str:
    """`text` made to follow the name rule ("my model/.." -> "my-model")."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:60] or fallback


def name_problem(name: str) -> str | None:
    return None if NAME_PATTERN.fullmatch(name) else f"The model name may hold only {NAME_RULE}."


_KINDS = {bool: ((bool,), "true or false"), int: ((int,), "a whole number"), float: ((int, float), "a number")}


@dataclass(frozen=True)
class DecodeOptions:
    """How captions are made from a model: every option of a caption request, in one place with its default.

    The Caption page, `python -m core.caption`, core.caption.library (LibraryConfig.decode), the caption worker's
    requests (to_dict / from_dict) and core.evaluate all hand one of these to core.nn.captioner, so a new option is
    a field here (and its flag or widget), not a keyword threaded through nine signatures. The tag settings are
    here too: the captioner applies them while it decodes, and the confident tags steer the beam (object words).
    Frozen, and checked when made: an impossible option fails where it is set, in words, not deep in a worker."""
    beam: int = 3  # beam width; 1 is greedy
    max_len: int = 20  # longest caption in words (also ModelConfig.max_len's default, the longest trained on)
    min_len: int = 1  # shortest caption in words
    num_captions: int = 1  # K > 1: the caption and K-1 alternatives, the top K beams (the beam widens to K)...
    top_p: float | None = None  # ... or, when set, K nucleus samples instead of beam search (varied, not repeatable)
    # a noun the image classifier is sure of must appear in the caption, and no person is named where it is sure of
    # an animal or object and sees no sign of people (core.caption.tags)
    object_words: bool = True
    # Beam search never repeats a word pair: "a man is riding a bike on a bike" cannot be written. Measured on the
    # Flickr8k dev split (beam 3, issue 19): against 3 (no repeated triple), 10.9% -> 0% of captions with a repeated
    # pair, CIDEr 53.98 -> 54.13 (Transformer) and 53.12 -> 54.02 (the same after self-critical training). 0: off.
    no_repeat_ngram: int = 2
    length_penalty: float = 0.7  # beams are ranked by log-probability / (words + 1) ** this; 0 favours short ones
    tag_threshold: float = 0.10  # a result's tags are the objects at least this probable...
    max_tags: int = 3  # ... at most this many (ImageNet's 1000 classes rarely give more than 3 nouns above 5%)

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ConfigError(" ".join(problems))

    def problems(self) -> list[str]:
        """Every option that cannot work, in plain words (empty when all can)."""
        out = []
        for f in fields(self):  # the kind of each value first: JSON from the worker's requests can hold anything
            value = getattr(self, f.name)
            if value is None and f.name == "top_p":  # None: beam search
                continue
            kinds, words = _KINDS[float if f.default is None else type(f.default)]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                out.append(f"The decoding option {f.name} must be {words} (it is {value!r}).")
        if out:
            return out
        if self.beam < 1:
            out.append(f"The beam width must be at least 1 (it is {self.beam}; 1 is greedy).")
        if self.max_len < 1:
            out.append(f"The longest caption must be at least 1 word (it is {self.max_len}).")
        if not 1 <= self.min_len <= max(self.max_len, 1):
            out.append(f"The shortest caption must be at least 1 word and at most the longest, {self.max_len} "
                       f"(it is {self.min_len}).")
        if self.num_captions < 1:
            out.append(f"Captions per photo must be at least 1 (it is {self.num_captions}).")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            out.append(f"The sampling nucleus (top-p) must be above 0 and at most 1 (it is {self.top_p}).")
        if self.no_repeat_ngram < 0:
            out.append(f"The no-repeat n-gram size cannot be negative (it is {self.no_repeat_ngram}; 0 is off).")
        if self.length_penalty < 0:
            out.append(f"The length penalty cannot be negative (it is {self.length_penalty}).")
        if not 0 <= self.tag_threshold <= 1:
            out.append(f"The tag threshold is a probability between 0 and 1 (it is {self.tag_threshold}).")
        if self.max_tags < 0:
            out.append(f"Tags per photo cannot be negative (it is {self.max_tags}).")
        return out

    def to_dict(self) -> dict:
        """The options as JSON-able values (the caption worker's requests carry them)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DecodeOptions":
        """The options of to_dict(); a key left out takes its default, an unknown one is refused (a typo, or a
        client newer than this worker, would otherwise be ignored without a word)."""
        if not isinstance(d, dict):
            raise ConfigError(f"decoding options must be a JSON object, not {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown decoding options: {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(f.name for f in fields(cls))})")
        return cls(**d)


# DecodeOptions' defaults by name, for what has no DecodeOptions: core.nn.decode's own defaults, ModelConfig.max_len
DEFAULT_BEAM = DecodeOptions.beam
DEFAULT_MAX_LEN = DecodeOptions.max_len
DEFAULT_NO_REPEAT_NGRAM = DecodeOptions.no_repeat_ngram


@dataclass
class ModelConfig:
    vocab_size: int = 0
    backbone: str = "efficientnet_lite0"
    decoder: str = "attention"  # "show_tell" (Vinyals 2015), "attention" (Xu 2015, soft) or "transformer"
    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 256
    feature_proj_dim: int = 512  # attention decoder: CNN channels are projected to this width first
    dropout: float = 0.3
    fine_tune: bool = False  # True: the backbone's weights are trained too and saved in the bundle
    fine_tune_blocks: int = 0  # with fine_tune: train only the backbone's last N stages (their input cached); 0: all
    max_len: int = DEFAULT_MAX_LEN  # longest caption (in words) in training and its validation (captions: DecodeOptions)
    num_layers: int = 3  # transformer decoder: layers (its width is hidden_dim, its feed-forward 4 x hidden_dim)
    num_heads: int = 8  # transformer decoder: attention heads (hidden_dim must be a multiple of it)
    ensemble: int = 1  # decoders over the one encoder, their word distributions averaged (core.nn.ensemble); 1: one
    # the backbone classifier's likeliest nouns the decoder reads beside the grid, with their probabilities
    # (core.nn.model.TagSlots); 0: none, as every bundle made before them
    tag_slots: int = 0

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if self.tag_slots and self.decoder not in GRID_DECODERS:
            raise ValueError(f"tag slots need a decoder that reads the grid ({', '.join(GRID_DECODERS)}), "
                             f"not {self.decoder!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# set from training's options (the vocabulary's size comes from the data; ensembles are joined after training)
MODEL_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name not in ("vocab_size", "ensemble"))


@dataclass
class TrainConfig:
    data: str = str(COCO_DIR)  # dataset folder, COCO or Flickr layout
    train_split: str = "train"
    val_split: str = "val"
    subset: float = 1.0  # quick run: this fraction of the images (chosen by a stable hash)
    model: ModelConfig = field(default_factory=ModelConfig)  # vocab_size is set from the data
    min_word_count: int = 5
    epochs: int = 10  # cross-entropy epochs
    batch_size: int = 64
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    alpha_c: float = 1.0  # "doubly stochastic" attention regulariser (Xu et al.), attention decoder only
    scst_epochs: int = 0  # self-critical epochs after the cross-entropy ones
    scst_lr: float = 2e-5
    scst_samples: int = 5
    scst_batch_size: int = 50  # images per SCST step
    device: str = "auto"
    model_name: str = ""  # folder name under models_dir for the finished model ("" = run folder name)
    models_dir: str = ""  # "" = core.base.paths.models_dir()
    cache_dir: str = ""  # "" = core.base.paths.cache_dir()
    val_images: int = 500  # images captioned for validation each epoch
    checkpoint_every: int = 200  # steps; whichever comes first of this and checkpoint_minutes
    checkpoint_minutes: float = 10.0  # so that a kill on a COCO-sized epoch loses minutes, not an hour
    log_every: int = 10  # steps
    seed: int = 0
    encode_batch_size: int = 32
    allow_missing: bool = False  # train on the images found even when more than 1% of a split's are missing
    max_steps_per_epoch: int = 0  # 0: whole epochs; else each epoch stops after this many steps (rehearsals)
    init_from: str = ""  # a model folder (same backbone and vocabulary) whose weights start the run, e.g. for SCST
    scst_max_len: int = 16  # longest sampled caption in SCST (words)
    scst_warmup_steps: int = 20  # SCST's learning rate warms up, then decays (cosine) over the SCST steps
    scst_top_p: float = 1.0  # SCST samples from this nucleus (1.0: the whole distribution)
    scst_dropout: bool = False  # SCST samples with dropout on (Rennie et al.'s code); off: the policy that is used
    precision: str = "auto"  # bf16 autocast where the CPU/GPU runs it natively (fp16 on older GPUs), else fp32
    views: int = 1  # cached views per training photo, one chosen per epoch (core.train.augment: mirrored, cropped); 1: none
    group_by_image: bool = False  # batches of whole images with all their captions: each image's features are
    # projected once for its 5 captions (10% less CPU a Transformer step, measured here); off: captions one by one
    fine_tune_lr_scale: float = 0.1  # the fine-tuned backbone stages learn at this fraction of the decoder's rate
    compile: bool = False  # torch.compile the decoder (core.nn.precision.compile_decoder): minutes to start, no gain on CPU
    # caption text without photos (a COCO caption JSON whose photos are absent, or one caption a line): sentences
    # and nouns the photos lack, learned as captions of "no photo" with tags made from their nouns (core.data.text_only)
    text_data: str = ""
    text_share: float = 0.3  # with text_data: the share of each step's captions taken from it (the default model's)
    text_exclude: str = ""  # with text_data: a folder of photos, or file names (comma-separated), whose captions are left out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Nested {"model": {...}} or flat model keys (older runs, command-line flags); unknown keys are refused."""
        d = dict(d)
        model = dict(d.pop("model", None) or {})
        model.update({k: d.pop(k) for k in MODEL_KEYS if k in d})
        d.pop("beam_size", None)  # recorded by older versions, read by nothing
        unknown = set(d) - {f.name for f in fields(cls)}
        unknown |= set(model) - {f.name for f in fields(ModelConfig)}
        if unknown:
            raise ConfigError(f"unknown training options: {', '.join(sorted(unknown))}")
        if model.get("decoder", "attention") not in DECODERS:
            raise ConfigError(f"unknown decoder {model['decoder']!r}; choose one of {', '.join(DECODERS)}")
        try:
            return cls(**d, model=ModelConfig(**model))
        except TypeError as e:
            raise ConfigError(str(e)) from None

    def resolved(self) -> "TrainConfig":
        """The same settings with every folder absolute; the form, the CLI and the trainer all call this."""
        d = self.to_dict()
        d["data"] = str(resolve(self.data))
        d["models_dir"] = str(resolve(self.models_dir) if self.models_dir else models_dir())
        d["cache_dir"] = str(resolve(self.cache_dir) if self.cache_dir else cache_dir())
        d["init_from"] = str(resolve(self.init_from)) if self.init_from else ""
        d["text_data"] = str(resolve(self.text_data)) if self.text_data else ""
        if self.text_exclude and "," not in self.text_exclude and resolve(self.text_exclude).is_dir():
            d["text_exclude"] = str(resolve(self.text_exclude))
        return TrainConfig.from_dict(d)

    def problems(self) -> list[str]:
        """Every setting that cannot work, in plain words (empty when the config can start a run)."""
        m, out = self.model, []
        if m.backbone not in BACKBONE_NAMES:
            out.append(f"Unknown backbone {m.backbone!r}; choose one of {', '.join(BACKBONE_NAMES)}.")
        if self.device not in DEVICES:
            out.append(f"Unknown device {self.device!r}; choose one of {', '.join(DEVICES)}.")
        if self.precision not in PRECISIONS:
            out.append(f"Unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}.")
        positive = {"epochs": self.epochs + self.scst_epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "embed_dim": m.embed_dim, "hidden_dim": m.hidden_dim, "attention_dim": m.attention_dim,
                    "feature_proj_dim": m.feature_proj_dim, "max_len": m.max_len, "val_images": self.val_images,
                    "checkpoint_every": self.checkpoint_every, "checkpoint_minutes": self.checkpoint_minutes,
                    "log_every": self.log_every, "scst_batch_size": self.scst_batch_size,
                    "scst_samples": self.scst_samples, "encode_batch_size": self.encode_batch_size,
                    "scst_max_len": self.scst_max_len, "num_layers": m.num_layers, "num_heads": m.num_heads, "views": self.views,
                    "min_word_count": self.min_word_count}
        out += [f"{k.replace('_', ' ')} must be more than 0 (it is {v})." for k, v in positive.items()
                if not isinstance(v, (int, float)) or v <= 0]
        if m.decoder == "transformer" and m.num_heads > 0 and m.hidden_dim % m.num_heads:
            out.append(f"The hidden size ({m.hidden_dim}) must be a multiple of the attention heads ({m.num_heads}).")
        if not 0 < self.subset <= 1:
            out.append(f"The quick-run fraction must be above 0 and at most 1 (it is {self.subset}).")
        if not 0 <= m.dropout < 1 or not 0 <= self.label_smoothing < 1:
            out.append("Dropout and label smoothing must be at least 0 and below 1.")
        if m.fine_tune_blocks < 0 or (m.fine_tune_blocks and not m.fine_tune):
            out.append("Fine-tuned stages need fine-tuning on, and cannot be negative (0: the whole backbone).")
        if m.fine_tune_blocks and m.backbone.startswith("resnet"):
            out.append("Fine-tuning the top stages needs an EfficientNet backbone; for a ResNet use 0 (all of it).")
        if self.max_steps_per_epoch < 0:
            out.append(f"Max steps per epoch cannot be negative (it is {self.max_steps_per_epoch}; 0: no limit).")
        if self.scst_epochs and self.scst_samples < 2:
            out.append("SCST needs at least 2 samples per image (each sample's baseline is the others' mean).")
        if not 0 < self.scst_top_p <= 1:
            out.append(f"The SCST nucleus (top-p) must be above 0 and at most 1 (it is {self.scst_top_p}).")
        if self.scst_warmup_steps < 0:
            out.append("SCST warm-up steps cannot be negative.")
        if self.epochs < 0 or self.scst_epochs < 0:
            out.append("Epochs cannot be negative.")
        if self.text_data and not m.tag_slots:
            out.append("Extra caption text needs tag slots (1 or more): the decoder reads the nouns of a sentence "
                       "without a photo as tags.")
        if not 0 <= self.text_share < 1:
            out.append(f"The share of caption text must be at least 0 and below 1 (it is {self.text_share}).")
        if m.tag_slots < 0 or m.tag_slots > 20:
            out.append(f"Tag slots must be between 0 and 20 (it is {m.tag_slots}).")
        if self.model_name and name_problem(self.model_name):
            out.append(name_problem(self.model_name))
        return out

    def check(self) -> "TrainConfig":
        problems = self.problems()
        if problems:
            raise ConfigError(" ".join(problems))
        return self


# Options of issue 19 that the Train page's Advanced section draws from here (name, label, help, (low, high) for
# numbers): a new option is one line, the page needs no change. Names are TrainConfig's or ModelConfig's fields.
ADVANCED_OPTIONS = (
    ("num_layers", "Transformer layers", "decoder Transformer only; its width is the hidden size", (1, 24)),
    ("num_heads", "Transformer attention heads", "the hidden size must be a multiple of it", (1, 32)),
    ("group_by_image", "Whole photos a batch", "each photo's image part computed once for its 5 captions: faster "
     "steps, the same data", None),
    ("views", "Views per photo", "1: the photo only; 2: and its mirror image (left/right swapped in the captions); "
     "3 and more: and cropped views; one chosen per photo each epoch, each cached once", (1, 8)),
    ("fine_tune_blocks", "Fine-tune only the top stages", "with Fine-tune: the backbone's last N stages learn, the "
     "stages below are cached once (0: all of the backbone, from pixels every step)", (0, 7)),
    ("fine_tune_lr_scale", "Backbone learning rate (x the decoder's)", "about 0.1 (Show, Attend and Tell)",
     (0.001, 1.0)),
    ("init_from", "Start from a model folder", "its weights start the run (e.g. fine-tuning after a frozen run)",
     None),
    ("tag_slots", "Tags the decoder reads", "the image network's likeliest objects (cat 0.96, sofa 0.4) given to the "
     "decoder with their probabilities, so it can name things its caption photos never showed; 0: none", (0, 20)),
    ("text_data", "Extra caption text, no photos needed", "a caption file whose photos you do not have (COCO's "
     "captions_train2017.json) or a text file with one caption a line: more sentences and more kinds of things "
     "to name; needs tags (above)", None),
    ("text_share", "Share of each step from the extra text", "e.g. 0.3: 30% of the captions of each step "
     "come from the text, 70% from the photos (the default model's share)", (0.0, 0.9)),
    ("text_exclude", "Leave out the captions of these photos", "a folder of photos (or file names, comma-separated) "
     "that you will check the model on: the text must not describe them to it", None),
)


def flag_fields() -> list[tuple[str, object, str]]:
    """(name, default, where) of every option a flag can set: TrainConfig's own, then the model's."""
    own = [(f.name, getattr(TrainConfig(), f.name), "train") for f in fields(TrainConfig) if f.name != "model"]
    return own + [(k, getattr(ModelConfig(), k), "model") for k in MODEL_KEYS]
