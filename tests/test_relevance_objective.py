"""RobustViT: the losses against hand-computed numbers, the objective's weighting, its validation loss,
missing-mask errors, training through the mask-carrying loader, the recipes and their lr schedule, and
the `relevance` benchmark (metrics on hand-made maps, then end to end)."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from helpers_train import tiny_config, train_run

import vitrobust  # noqa: F401
from vitrobust.config import ConfigError, load_config
from vitrobust.data import Batch, BatchLoader, load_split
from vitrobust.errors import InputError
from vitrobust.evaluate import evaluate
from vitrobust.evaluate.relevance import foreground_share, mask_iou, pointing_game
from vitrobust.explain import explain
from vitrobust.models import build_model
from vitrobust.objectives import TrainState, build_objective
from vitrobust.objectives.relevance import segmentation_losses, self_distillation
from vitrobust.train.loop import build_scheduler

pytestmark = pytest.mark.usefixtures("one_thread")


def vit(depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {"name": "vit_pico_patch8_32", "num_classes": 10, "in_chans": 1, "img_size": 32, "mean": [0.25],
            "std": [0.5], "kwargs": {"embed_dim": 32, "depth": depth, "num_heads": 2}}
    return build_model(spec)


def batch(n: int = 4, seed: int = 0, mask: bool = True, **extras) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g)
    b = Batch(x=x, y=torch.arange(n) % 10, index=torch.arange(n))
    if mask:
        m = torch.zeros(n, 1, 32, 32, dtype=torch.bool)
        m[:, :, 8:24, 4:20] = True  # a 16 x 16 object
        b.extras["mask"] = m
    b.extras.update(extras)
    return b


def objective(**params):
    return build_objective({"name": "relevance", **params})


# --- the losses ---------------------------------------------------------------------------------


def test_segmentation_losses_by_hand():
    maps = torch.tensor([[[1.0, 0.5], [0.25, 0.0]]])
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    background, foreground = segmentation_losses(maps, mask)
    assert background.item() == pytest.approx((0 + 0.5**2 + 0 + 0) / 4)  # relevance off the object
    assert foreground.item() == pytest.approx((0 + 0 + (0.25 - 1) ** 2 + 0) / 4)  # object pixels short of 1
    # a perfect map costs nothing
    assert segmentation_losses(mask, mask)[0].item() == 0 and segmentation_losses(mask, mask)[1].item() == 0


def test_self_distillation_uses_the_models_own_top1_and_temperature():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # top-1 are classes 0 and 2 whatever the labels are
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(1 + 2 * math.exp(-1))) / 2
    assert self_distillation(logits, 1.0).item() == pytest.approx(expected, rel=1e-6)
    sharper = (math.log(1 + 2 * math.exp(-4)) + math.log(1 + 2 * math.exp(-2))) / 2  # logits / 0.5
    assert self_distillation(logits, 0.5).item() == pytest.approx(sharper, rel=1e-6)


def test_objective_combines_the_terms_with_every_weight():
    model, b = vit(), batch()
    model.train()
    p = {"seg_weight": 0.5, "cls_weight": 1.5, "background_weight": 3.0, "foreground_weight": 0.7, "temperature": 2.0}
    loss, logs = objective(**p).loss(model, b, TrainState())
    expl = explain(model, b.x, b.y)
    s = b.extras["mask"][:, 0].float()
    bg, fg = ((expl.maps * (1 - s)) ** 2).mean(), ((expl.maps * s - s) ** 2).mean()
    cls = torch.nn.functional.cross_entropy(expl.logits / 2.0, expl.logits.argmax(-1))
    expected = 0.5 * (3.0 * bg + 0.7 * fg) + 1.5 * cls
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["bg"].item() == pytest.approx(bg.item(), rel=1e-5) and logs["cls"].item() == pytest.approx(cls.item(), rel=1e-5)
    assert logs["acc"].item() == pytest.approx((expl.logits.argmax(-1) == b.y).float().mean().item())
    # the reference defaults: 0.8 * (2.0 L_bg + 0.3 L_fg) + 0.2 L_cls at T = 1
    loss, _ = objective().loss(model, b, TrainState())
    default = 0.8 * (2.0 * bg + 0.3 * fg) + 0.2 * torch.nn.functional.cross_entropy(expl.logits, expl.logits.argmax(-1))
    assert loss.item() == pytest.approx(default.item(), rel=1e-5)


def test_loss_trains_the_attention_and_prefers_the_fractional_mask():
    model, b = vit(), batch()
    model.train()
    loss, _ = objective(cls_weight=0.0).loss(model, b, TrainState())
    loss.backward()  # the segmentation loss alone reaches the weights through the attention maps
    assert model.net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    soft = b.extras["mask"].float() * 0.5
    soft_batch = batch(mask_soft=soft)
    loss_soft, logs = objective().loss(model, soft_batch, TrainState())
    expl = explain(model, b.x, b.y)
    s = soft[:, 0]
    assert logs["fg"].item() == pytest.approx(((expl.maps * s - s) ** 2).mean().item(), rel=1e-5)


def test_missing_masks_and_mixed_batches_are_errors():
    model = vit()
    with pytest.raises(InputError, match="set data.masks.source"):
        objective().loss(model, batch(mask=False), TrainState())
    mixed = batch()
    mixed.target = torch.full((4, 10), 0.1)
    with pytest.raises(ConfigError, match="mixup"):
        objective().loss(model, mixed, TrainState())
    wrong = batch()
    wrong.extras["mask"] = wrong.extras["mask"][:, :, :16]
    with pytest.raises(InputError, match="masks must match the images"):
        objective().loss(model, wrong, TrainState())


def test_validation_metric_is_the_image_weighted_mean_loss_without_gradients():
    model, obj = vit().eval(), objective()
    batches = [batch(4, seed=1), batch(2, seed=2)]
    per_batch = [obj.terms(model, b, differentiable=False)["loss"].item() for b in batches]
    metric = obj.validation_metric(model, batches)
    assert metric.name == "val_relevance_loss" and metric.higher_is_better is False
    assert metric.value == pytest.approx((4 * per_batch[0] + 2 * per_batch[1]) / 6, rel=1e-6)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(InputError, match="empty"):
        obj.validation_metric(model, [])


def test_objective_params_are_validated():
    cfg = load_config("quickstart/baseline", ["objective.name=relevance", "objective.temperature=0.55"])
    assert cfg.objective["temperature"] == 0.55 and cfg.objective["background_weight"] == 2.0
    with pytest.raises(ConfigError, match="temperature"):
        load_config("quickstart/baseline", ["objective.name=relevance", "objective.temperature=0"])
    with pytest.raises(ConfigError, match="seg_weight"):
        load_config("quickstart/baseline", ["objective.name=relevance", "objective.seg_weigth=1"])


# --- training through the loader ----------------------------------------------------------------


def test_training_with_threshold_masks_from_the_loader(tiny_idx_root, tmp_path):
    cfg = tiny_config(f"data.root={tiny_idx_root}", "data.train_subset=64", "data.test_subset=32", "train.epochs=1",
                      "train.eval_subset=16", "objective.name=relevance", "data.masks.source=threshold",
                      "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2}")
    train_data = load_split(cfg.data, "train")
    b = next(iter(BatchLoader(train_data, 8, torch.device("cpu"), train=True)))
    expected = b.x.amax(1, keepdim=True) > 0.1  # threshold masks follow the pixels they were made from
    assert torch.equal(b.extras["mask"], expected)
    run = train_run(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows and all({"seg", "bg", "fg", "cls"} <= r.keys() for r in train_rows)
    no_masks = tiny_config(f"data.root={tiny_idx_root}", "data.train_subset=64", "train.epochs=1",
                           "objective.name=relevance", "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2}")
    with pytest.raises(InputError, match="set data.masks.source"):
        train_run(no_masks, tmp_path / "run2")


def test_keep_best_selects_the_epoch_with_the_lowest_validation_loss(tiny_idx_root, tmp_path):
    from vitrobust.checkpoint import read_weights

    cfg = tiny_config(f"data.root={tiny_idx_root}", "data.train_subset=64", "data.test_subset=32", "train.epochs=3",
                      "train.eval_subset=16", "objective.name=relevance", "data.masks.source=threshold",
                      "train.keep_best=true", "optim.lr=3e-2", "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2}")
    run = train_run(cfg, tmp_path / "run")
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["epoch"]: r["val_relevance_loss"] for r in evals if r["kind"] == "eval"}
    assert len(losses) == 3 and len(set(losses.values())) == 3  # (test_top1 stays flat here: selection by it would keep epoch 1)
    _, meta = read_weights(run / "best.safetensors")
    assert int(meta["epoch"]) == min(losses, key=losses.get)


# --- recipes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "model", "lr", "temperature"), [
    ("robustvit_vit_base_imagenet", "vit_base_patch16_224", 3e-6, 1.0),
    ("robustvit_deit_small_imagenet", "deit_small_patch16_224", 1e-6, 0.55),
    ("robustvit_deit_base_imagenet", "deit_base_patch16_224", 8e-7, 0.65),
])
def test_recipes_hold_the_reference_settings(name, model, lr, temperature):
    cfg = load_config(f"recipes/{name}")
    assert cfg.model.name == model and cfg.optim.name == "adamw" and cfg.optim.lr == lr
    assert cfg.optim.weight_decay == 1e-4 and cfg.data.batch_size == 8 and cfg.train.epochs == 50
    o = cfg.objective
    assert (o["name"], o["temperature"], o["seg_weight"], o["cls_weight"]) == ("relevance", temperature, 0.8, 0.2)
    assert (o["background_weight"], o["foreground_weight"], o["target"]) == (2.0, 0.3, "label")
    m = cfg.data.masks
    assert (m.source, m.split, m.images_per_class, m.train_classes, m.val_images_per_class) == \
        ("folder", "reference", 3, 500, 1)
    assert cfg.train.keep_best
    # lr * 0.85^(epoch // 2), changing at epoch boundaries (5 steps per epoch here)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=5)
    for epoch in range(7):
        for step in (5 * epoch, 5 * epoch + 4):
            scheduler.step_update(step)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(lr * 0.85 ** (epoch // 2), rel=1e-9)


def test_quickstart_config_fine_tunes_the_baseline_with_threshold_masks():
    cfg = load_config("quickstart/relevance")
    base = load_config("quickstart/baseline")
    assert cfg.objective["name"] == "relevance" and cfg.data.masks.source == "threshold"
    assert cfg.model.name == base.model.name and cfg.schedule.name == "step"


# --- the benchmark ------------------------------------------------------------------------------


def test_metrics_on_hand_made_maps():
    masks = torch.zeros(3, 2, 2, dtype=torch.bool)
    masks[:, 0, 0] = True  # the object is the top-left pixel
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]],  # all relevance on the object
                         [[0.2, 0.6], [0.2, 0.0]],  # most relevant pixel off the object
                         [[0.0, 0.0], [0.0, 0.0]]])  # constant map: uniform
    assert torch.allclose(foreground_share(maps, masks), torch.tensor([1.0, 0.2, 0.25]))
    assert pointing_game(maps, masks).tolist() == [True, False, True]  # a tie goes to the first pixel
    iou = mask_iou(maps, masks, threshold=0.2)  # {0,0}; {00,01,10} vs {00}; {} vs {00}
    assert torch.allclose(iou, torch.tensor([1.0, 1 / 3, 0.0]))


def test_relevance_benchmark_end_to_end(tiny_idx_root, tmp_path):
    model = vit().eval()
    cfg = tiny_config(f"data.root={tiny_idx_root}", "data.masks.source=threshold", "evaluate.relevance.subset=20",
                      "evaluate.relevance.grid=4", "evaluate.relevance.iou_threshold=0.4")
    entry = evaluate(model, "relevance", cfg=cfg, out_dir=tmp_path, batch_size=8)["relevance"]
    data = load_split(cfg.data, "test").subset(20)
    x = data.images.float() / 255
    masks = data.masks[:, 0] > 0
    maps = explain(model, x, data.labels).maps
    assert entry["n"] == 20 and entry["method"] == "chefer" and entry["target"] == "label"
    assert entry["foreground_share"] == pytest.approx(foreground_share(maps, masks).mean().item(), abs=1e-5)
    assert entry["pointing_game"] == pytest.approx(pointing_game(maps, masks).float().mean().item(), abs=1e-6)
    assert entry["iou"] == pytest.approx(mask_iou(maps, masks, 0.4).mean().item(), abs=1e-5)
    assert entry["figures"] == ["relevance_chefer.png"] and (tmp_path / "relevance_chefer.png").is_file()

    plain = tiny_config(f"data.root={tiny_idx_root}")  # no masks: maps drawn, metrics skipped
    entry = evaluate(model, "relevance", cfg=plain, out_dir=tmp_path / "plain")["relevance"]
    assert entry["pointing_game"] is None and "data.masks.source" in entry["skipped"]
    assert (tmp_path / "plain" / entry["figures"][0]).is_file()
    xcit = timm.create_model("xcit_nano_12_p8_224", num_classes=10, img_size=32, in_chans=1, depth=1).eval()
    entry = evaluate(xcit, "relevance", cfg=cfg)["relevance"]
    assert entry["n"] == 0 and "cross-covariance" in entry["skipped"]
