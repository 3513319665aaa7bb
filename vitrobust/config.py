"""Typed run configuration: YAML in, validated schema out.

A config file may name a `base` config (a path, or a shipped name such as
`quickstart/baseline`) that it extends; `--set a.b=c` overrides are applied last.
Unknown keys are errors that name the closest valid key. The `objective:` section is checked against
the `Params` model of the objective it names (OBJECTIVES, filled by vitrobust.objectives).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vitrobust.errors import ConfigError, suggest
from vitrobust.registry import ATTACK_ENGINES, OBJECTIVES
from vitrobust.shift_sets import ROOT_KEYS
from vitrobust.threat import ThreatModel

CONFIG_DIR = Path(__file__).parent / "configs"
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MaskConfig(Section):
    """Foreground masks (relevance fine-tuning and benchmarks); they follow the image through crop and flip."""

    source: Literal["none", "threshold", "folder", "callable"] = "none"
    root: str | None = Field(None, description="folder: mask PNGs mirroring the image tree (ImageNet-S encoding)")
    threshold: float = Field(0.1, ge=0.0, le=1.0, description="threshold: pixels brighter than this (max over "
                             "channels) are foreground; for objects on a plain dark background")
    callable: str | None = Field(None, description="callable: 'package.module:function', (uint8 NCHW) -> bool N1HW")
    resize: Literal["nearest", "bilinear"] = Field("nearest", description="bilinear only to match the reference")
    missing: Literal["drop", "error"] = Field("drop", description="folder: images without a mask file are "
                                              "dropped (ImageNet-S covers a subset of ImageNet) or an error")
    split: Literal["none", "reference"] = Field("none", description="reference: RobustViT's split of the masked "
                                                "training images; train = images_per_class from each of "
                                                "train_classes classes, test = val_images_per_class from each "
                                                "remaining class (classes: sorted names shuffled by split_seed)")
    images_per_class: int = Field(3, ge=1)
    train_classes: int = Field(500, ge=1)
    val_images_per_class: int = Field(1, ge=1)
    split_seed: int = 0


FOLLOWS_TRAINING = ("imagefolder", "webdataset")  # datasets whose evaluation resize follows the training crop (Config)
RRC_CROP_PCT = 0.875  # the ImageNet convention: 256 -> 224


class DataConfig(Section):
    name: str = "fashion_mnist"
    root: str | None = None
    download: bool = False
    img_size: int | None = Field(None, description="resize to this size; default: the dataset's own size")
    crop_pct: float | None = Field(None, gt=0, le=1, description="evaluation resize rule of datasets read from image "
                                   "files: shorter side to img_size / crop_pct, centre crop (default: 0.875 for "
                                   "ImageNet; imagefolder and webdataset follow training: 0.875 after augment.crop=rrc, else 1, "
                                   "the plain resize training used; imported models carry their own)")
    interpolation: Literal["bilinear", "bicubic"] | None = Field(None, description="resize filter of that rule "
                                                                  "(default: the dataset's, bilinear for ImageNet)")
    in_chans: Literal[1, 3] | None = Field(None, description="channels of datasets read from image files (1: "
                                 "grayscale, 3: RGB; default 3); every image is converted, whatever its mode")
    skip_bad: bool = Field(False, description="datasets read from image files: skip images that cannot be decoded "
                           "(and report how many) instead of stopping with the file's name")
    train_subset: int | None = Field(None, ge=1, description="a balanced sample of n training samples (the same "
                                     "number per class as far as they go, drawn with data.subset_seed)")
    test_subset: int | None = Field(None, ge=1, description="a balanced sample of n test samples")
    subset_seed: int = Field(0, description="seed of every subset's balanced sample (not the run's seed: runs "
                             "trained with other seeds are evaluated on the same images)")
    batch_size: int = Field(128, ge=1, description="global batch size (split across ranks)")
    eval_batch_size: int = Field(500, ge=1)
    num_workers: int = Field(0, ge=0)
    in_memory: bool | Literal["auto"] = Field("auto", description="decode once and keep uint8 tensors in memory; "
                                              "auto: when the decoded split fits data.memory_budget_gb, else "
                                              "decode lazily in data.num_workers worker processes (webdataset "
                                              "training: streamed shard by shard)")
    memory_budget_gb: float = Field(4.0, gt=0, description="in_memory=auto: the most a decoded split may take")
    masks: MaskConfig = Field(default_factory=MaskConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options (webdataset: "
                                     "train, test, class_map, shuffle_buffer); one a dataset does not know is an error")


class AugmentConfig(Section):
    crop: Literal["none", "rrc", "pad"] = "none"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_padding: int = 4
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    hflip: bool = False
    color_jitter: float = Field(0.0, ge=0.0)
    randaugment: str | None = Field(None, description="timm RandAugment string, e.g. rand-m9-mstd0.5")
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)
    mixup: float = Field(0.0, ge=0.0)
    cutmix: float = Field(0.0, ge=0.0)
    mixup_prob: float = Field(1.0, ge=0.0, le=1.0)
    mixup_switch_prob: float = Field(0.5, ge=0.0, le=1.0)


Stats = list[float] | Literal["dataset", "imagenet", "none"]


class ModelConfig(Section):
    name: str = "vit_pico_patch8_32"
    patch_size: int | None = None
    mean: Stats = "dataset"
    std: Stats = "dataset"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for timm")
    init: str | None = Field(None, description="run dir or .safetensors to start from (fine-tuning)")
    adapt_patch_size: int | None = Field(None, ge=1, description="after init, change the patch size (16 -> 4)")
    init_img_size: int = Field(224, ge=1, description="image size the init weights were trained at")


class OptimConfig(Section):
    name: str = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    clip_grad: float | None = Field(1.0, description="max global gradient norm; null disables")


class ScheduleConfig(Section):
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_lr: float = Field(1e-6, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    cooldown_epochs: float = Field(0.0, ge=0, description="cosine: epochs at min_lr after the decay")
    decay_epochs: float = Field(2.0, gt=0, description="step schedule: period")
    decay_rate: float = Field(0.85, gt=0, description="step schedule: factor per period")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    ema_decay: float | None = Field(None, description="EMA of the weights, e.g. 0.9998; null disables")
    eval_every: int = Field(1, ge=0, description="evaluate every n epochs (0: only at the end)")
    eval_subset: int | None = Field(None, ge=1, description="a balanced sample of n test samples for "
                                       "per-epoch eval")
    log_every: int = Field(50, ge=1, description="steps between metrics.jsonl lines")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also checkpoint mid-epoch")
    keep_best: bool = Field(False, description="also keep best.safetensors by validation metric")


class AttackConfig(Section, ThreatModel):
    """Threat model (norm, eps, gradient) and budget of the adversarial benchmarks (pgd, autoattack, eps_sweep)."""

    steps: int = Field(10, ge=1, description="pgd benchmark: iterations")
    step_size: float | None = Field(None, description="pgd benchmark: default 2.5*eps/steps")
    restarts: int = Field(1, ge=1)
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attacks: list[str] | None = Field(None, description="AutoAttack version=custom: e.g. [apgd-ce, apgd-t]")
    eps_list: list[float] | None = Field(None, description="eps_sweep: eps values (default: 0..2*eps)")
    subset: int | None = Field(1000, ge=1, description="a balanced sample of n test samples for "
                                 "the adversarial benchmarks")
    seed: int = 0
    engine: str = Field("fast", description="AutoAttack implementation (evaluate.attack.engine); authors: "
                        "the authors' code (pyautoattack); fast (default: the authors' verdict on every image the "
                        "benchmark measured): the same attacks, budgets and random starts with less "
                        "work (our APGD and FAB-T, FAB-T's targets batched, broken points dropped at once); APGD "
                        "in fp32 unless env VITROBUST_AA_PRECISION=auto|bf16|fp16 (faster, every success re-checked "
                        "in fp32, but some verdicts differ as with another seed); version rand always runs the "
                        "authors' code")
    batch_size: int | None = Field(None, ge=1, description="images per attack batch and per resumable AutoAttack "
                                   "chunk (default: data.eval_batch_size)")
    sweep_attack: Literal["pgd", "autoattack"] = Field("pgd", description="eps_sweep: the attack run at each eps")
    check_n: int = Field(64, ge=1, description="images used by the self-checks (gradients, huge eps, "
                         "Square): a balanced sample of the attacked ones")
    square_queries: int = Field(500, ge=0, description="queries of the short Square check on points the white-box "
                                "attack left robust, when no Square ran (0: skip)")
    blackbox_queries: int = Field(5000, ge=1, description="queries of the square benchmark (black-box Square alone, "
                                  "e.g. on an exported file; AutoAttack standard's budget is 5000)")
    grid: int = Field(8, ge=0, description="adversarial examples drawn in the figure (0: none)")
    verbose: bool = Field(False, description="show the AutoAttack authors' progress lines")


    @field_validator("engine")
    @classmethod
    def _known_engine(cls, engine: str) -> str:
        ATTACK_ENGINES.get(engine)
        return engine


class CorruptionConfig(Section):
    """The corruptions benchmark: generated with imagecorruptions, or read from published files."""

    names: list[str] | Literal["common", "extra", "all"] = Field("common", description="common: the 15 of "
                                                                   "ImageNet-C; extra: the 4 held-out; all: 19")
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    subset: int | None = Field(1000, ge=1, description="a balanced sample of n test samples "
                                 "that are corrupted")
    seed: int = 0
    workers: int = Field(0, ge=0, description="worker processes that generate corrupted images (0: in-process)")
    cache: str | None = Field(None, description="folder where generated corrupted sets are kept and reused")
    source: Literal["generate", "imagenet-c", "cifar-c"] = "generate"
    root: str | None = Field(None, description="imagenet-c / cifar-c: folder of the published files")
    reference: str | None = Field(None, description="run dir or results.json of the model mCE is relative to, "
                                  "evaluated with the same names, severities, subset and source (default: "
                                  "AlexNet's published errors on ImageNet-C; elsewhere none, and mce is null)")


class ShiftConfig(Section):
    """ImageNet and distribution-shift benchmarks: where each dataset lies (nothing is downloaded)."""

    roots: dict[str, str | None] = Field(default_factory=dict, description="dataset -> folder (null: not given), "
                                         "e.g. imagenet_v2: /data/imagenetv2-matched-frequency-format-val; keys: "
                                         "imagenet (val; default data.root), imagenet_v2, imagenet_a, imagenet_r, "
                                         "imagenet_sketch, stylized_imagenet, objectnet, si_score")
    subset: int | None = Field(None, ge=1, description="a balanced sample of n images of "
                                 "each set")
    crop_pct: float | None = Field(None, gt=0, le=1, description="resize the shorter side to img_size / crop_pct, "
                                   "then centre-crop; default data.crop_pct, else 0.875 (256 -> 224, as RobustBench); "
                                   "Stylized-ImageNet is never resized")
    interpolation: Literal["bilinear", "bicubic"] | None = Field(None, description="resize filter; default "
                                                                  "data.interpolation, else bilinear (torchvision's "
                                                                  "default, used by RobustBench and RobustViT)")

    @field_validator("roots")
    @classmethod
    def _known_roots(cls, roots: dict[str, str | None]) -> dict[str, str | None]:
        for key in roots:
            if key not in ROOT_KEYS:
                raise ValueError(f"unknown dataset {key!r}; {suggest(key, ROOT_KEYS)}known: {', '.join(ROOT_KEYS)}")
        return roots


class RelevanceConfig(Section):
    method: Literal["chefer", "rollout"] = "chefer"
    target: Literal["label", "prediction"] = "label"
    subset: int | None = Field(500, ge=1)
    iou_threshold: float = Field(0.5, ge=0.0, le=1.0, description="relevance map threshold for the IoU")
    grid: int = Field(8, ge=0, description="images drawn in the relevance figure (0: none)")


class BackgroundConfig(Section):
    """ImageNet-9 backgrounds challenge protocol on any dataset with masks."""

    subset: int | None = Field(1000, ge=1)
    seed: int = 0


class EvaluateConfig(Section):
    suite: str = "clean"
    subset: int | None = Field(None, ge=1, description="a balanced sample of n test samples")
    use_ema: bool = False
    checkpoint_seconds: float = Field(120.0, gt=0, description="long evaluations (AutoAttack, corruptions, shift "
                                      "sets) save their progress at least this often, so an interrupted one resumes")
    bootstrap_resamples: int = Field(1000, ge=10, description="resamples of the bootstrap intervals over images "
                                     "(mCE, mean scores); Wilson intervals need none")
    bootstrap_seed: int = 0
    attack: AttackConfig = Field(default_factory=AttackConfig)
    corruptions: CorruptionConfig = Field(default_factory=CorruptionConfig)
    shifts: ShiftConfig = Field(default_factory=ShiftConfig)
    relevance: RelevanceConfig = Field(default_factory=RelevanceConfig)
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)


class TokenizerConfig(Section):
    """`vitrobust tokenizer train`: a VQGAN-layout tokenizer (data/optim/schedule/train sections apply too)."""

    preset: str | None = Field(None, description="a published layout, e.g. vqgan_imagenet_f16_1024")
    arch: dict[str, Any] = Field(default_factory=dict, description="layout keys (ch, ch_mult, num_res_blocks, "
                                 "attn_resolutions, z_channels, embed_dim, n_embed, ...) over the preset's")
    init: str | None = Field(None, description="start from this tokenizer: a vitrobust run/.safetensors (its own "
                             "layout) or a taming .ckpt (layout from preset/arch, else read from its shapes)")
    trust_checkpoint: bool = Field(False, description="init is a .ckpt that pickles objects (Lightning): read it "
                                   "anyway, as inert placeholders; only for files you trust")
    recon_loss: Literal["l1", "mse"] = "l1"
    codebook_update: Literal["ema", "loss"] = Field("ema", description="ema: codes follow an EMA of the encoder "
                                                    "outputs (vector-quantize-pytorch); loss: taming's codebook loss")
    codebook_decay: float = Field(0.9, gt=0.0, lt=1.0, description="codebook_update=ema: EMA decay")
    commitment_weight: float = Field(0.25, ge=0.0)
    codebook_weight: float = Field(1.0, ge=0.0, description="codebook_update=loss: weight of |sg[z] - e|^2")
    perceptual_weight: float = Field(0.0, ge=0.0, description="needs a pretrained network; off by default")
    gan_weight: float = Field(0.0, ge=0.0)
    dead_code_threshold: float = Field(0.0, ge=0.0, description="codebook_update=ema: re-seed codes whose EMA "
                                       "usage count falls below this from the batch (0: never)")
    kmeans_init: bool = Field(False, description="codebook_update=ema: k-means init on the first batch")
    grid: int = Field(8, ge=1, description="test images drawn in figures/reconstructions.png")

    @field_validator("codebook_weight", "dead_code_threshold", "kmeans_init")
    @classmethod
    def _needs_its_update_rule(cls, value, info):
        mode = info.data.get("codebook_update", "ema")
        if info.field_name == "codebook_weight" and mode == "ema" and value != 1.0:
            raise ValueError("applies to codebook_update=loss; with ema the codebook follows an EMA of the encoder "
                             "outputs (tune codebook_decay instead)")
        if info.field_name != "codebook_weight" and mode == "loss" and value:
            raise ValueError("needs codebook_update=ema (vector-quantize-pytorch's EMA codebook)")
        return value


class CompareConfig(Section):
    """What a run is compared with: its matched control (docs/architecture.md, "Matched controls")."""

    control: str | None = Field(None, description="the run this one is compared with: trained from the same "
                                "start, data order and steps, with only the objective (or model) changed")


class Config(Section):
    name: str = "run"
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    objective: dict[str, Any] = Field(default_factory=lambda: {"name": "standard"})
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)

    @field_validator("objective")
    @classmethod
    def _check_objective(cls, value: dict[str, Any]) -> dict[str, Any]:
        params = objective_params(value)  # raises ConfigError on a bad name or key
        return {"name": value.get("name", "standard"), **params.model_dump()}

    @model_validator(mode="after")
    def _test_resize_follows_training(self) -> Config:
        """A user's folder dataset is evaluated at the scale it was trained at: after random-resized-crop
        training, the ImageNet rule (shorter side to img_size / 0.875, centre crop); after training on
        whole images (no crop, or pad-and-crop), the same plain resize. The resolved value is written into
        the run's config.yaml, so evaluation repeats it; so are the filter and channels the images are
        read with (the loaders' defaults: bicubic, RGB), so results.json records the whole rule."""
        if self.data.name in FOLLOWS_TRAINING:
            if self.data.crop_pct is None:
                self.data.crop_pct = RRC_CROP_PCT if self.augment.crop == "rrc" else 1.0
            self.data.interpolation = self.data.interpolation or "bicubic"
            self.data.in_chans = self.data.in_chans or 3
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- loading -------------------------------------------------------------------------------


def resolve_config_path(name: str | Path) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name}", CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))
    raise ConfigError(f"config {str(name)!r} not found: give a YAML path or a shipped config ({', '.join(shipped)})")


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "objective":
            out[key] = deep_merge(out[key], value)
        elif key == "objective" and isinstance(value, dict) and isinstance(out.get(key), dict):
            same = value.get("name", out[key].get("name")) == out[key].get("name")
            out[key] = {**out[key], **value} if same else dict(value)
        else:
            out[key] = value
    return out


def read_config_dict(name: str | Path, _seen: tuple = ()) -> dict:
    path = resolve_config_path(name).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} extends itself through 'base'")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    local = path.parent / base
    parent = read_config_dict(local if local.is_file() else base, _seen + (path,))
    return deep_merge(parent, raw)


def _parse_value(text: str):
    """A YAML scalar/list/mapping; also floats YAML 1.1 reads as strings (1e-3)."""
    if text == "":
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str) and _SCIENTIFIC.match(value):
        return float(value)
    return value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    raw = dict(raw)
    # a new objective.name resets the objective section: apply it before that section's other keys
    for item in sorted(overrides or [], key=lambda item: not item.strip().startswith("objective.name=")):
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. optim.lr=1e-3)")
        key, text = item.split("=", 1)
        value = _parse_value(text)
        parts = key.strip().split(".")
        node = {}
        cursor = node
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        raw = deep_merge(raw, node)
    return raw


def _valid_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _explain(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = item["loc"]
        dotted = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            valid = _valid_keys(loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
            lines.append(f"unknown config key {dotted!r}; {hint} valid keys here: {', '.join(valid)}")
        elif item["type"] == "value_error":
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(msg if msg.startswith(dotted) else f"{dotted}: {msg}")
        else:
            lines.append(f"{dotted}: {item['msg'].removeprefix('Value error, ')} (got {item.get('input')!r})")
    if len(lines) == 1:
        return f"invalid config: {lines[0]}"
    return "invalid config:\n  " + "\n  ".join(lines)


def build_config(raw: dict) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


def load_config(name: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    raw = read_config_dict(name) if name is not None else {}
    return build_config(apply_overrides(raw, overrides))


def config_for_run(saved_yaml: str, overrides: list[str] | None = None, suite: str | None = None) -> Config:
    """The config a run was trained with (its saved YAML text, e.g. from a weights file's metadata), then
    the shipped evaluation preset of each benchmark of `suite` that has one (configs/eval/<name>.yaml:
    ImageNet's eps, subsets, dataset folders), then the overrides."""
    raw = yaml.safe_load(saved_yaml or "") or {}
    for name in (suite or "").split(","):
        if name.strip() and (CONFIG_DIR / "eval" / f"{name.strip()}.yaml").is_file():
            raw = deep_merge(raw, read_config_dict(f"eval/{name.strip()}"))
    return build_config(apply_overrides(raw, overrides))


# what a control may change (the method itself), and settings that do not change what is trained
CONTROL_MAY_DIFFER = ("name", "objective", "model.name", "model.kwargs", "compare", "evaluate", "tokenizer", "device",
                      "data.num_workers", "data.eval_batch_size", "train.log_every", "train.checkpoint_every_steps")


def _flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "objective":
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def control_mismatches(method: dict, control: dict) -> list[str]:
    """How a control's resolved config differs from its method's beyond the method itself (objective,
    model): the same start (model.init), data and order (data, seed), steps and schedule (train, optim,
    schedule, augment) are what make a difference the method's. One line per differing key."""
    if not method or not control:
        return ["no config.yaml to check the match"]
    a, b = _flatten(method), _flatten(control)
    differs = [k for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k) and not any(k == p or k.startswith(f"{p}.") for p in CONTROL_MAY_DIFFER)]
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in differs]


def control_config(method: Config, model: str | None = None) -> Config:
    """The matched control of a method's config: the same config with standard training in place of the
    objective (keeping its loss and label smoothing) and, for a method that is a model (Dr.ViT), `model`
    in place of it with the network's own arguments dropped; everything else (start, data, seed, steps,
    schedule, evaluation) stays, so control_mismatches is empty."""
    raw = method.model_dump(mode="json")
    raw["objective"] = {"name": "standard", **{k: v for k, v in method.objective.items()
                                               if k in ("label_smoothing", "loss")}}
    if model is not None:
        raw["model"] = {**raw["model"], "name": model, "kwargs": {}}
    raw["compare"] = {"control": None}
    raw["name"] = f"{method.name}_control"
    return build_config(raw)


def objective_params(section: dict[str, Any]):
    """The validated `Params` of the objective `section` names (ConfigError naming the bad key)."""
    section = dict(section)
    name = section.pop("name", "standard")
    params_cls = OBJECTIVES.get(name, key="objective.name").Params
    try:
        return params_cls.model_validate(section)
    except ValidationError as err:
        msgs = []
        valid = list(params_cls.model_fields)
        for item in err.errors():
            key = ".".join(map(str, item["loc"]))
            if item["type"] == "extra_forbidden":
                msgs.append(f"objective.{key}: unknown key for objective {name!r}; {suggest(key, valid)}"
                            f"valid: {', '.join(valid)}")
            else:
                msgs.append(f"objective.{key}: {item['msg'].removeprefix('Value error, ')} (got {item.get('input')!r})")
        raise ConfigError("; ".join(msgs)) from None
