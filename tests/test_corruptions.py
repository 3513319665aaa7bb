"""The corruptions benchmark: generation (all 19 corruptions, grey images, seeding, workers, cache),
the published ImageNet-C / CIFAR-C layouts, mCE and relative mCE against hand-computed numbers,
references (AlexNet, another run, this run), and the accuracy-vs-severity figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file
from torch import nn

from vitrobust.checkpoint import save_weights
from vitrobust.config import load_config
from vitrobust.data import ImageSet
from vitrobust.data.corruption_files import load_imagenet_c
from vitrobust.data.corruptions import (
    GROUPS,
    CacheWarning,
    CorruptionCache,
    CorruptionPool,
    cache_key,
    corrupt_images,
    corruption_names,
)
from vitrobust.errors import DatasetError, InputError
from vitrobust.evaluate import SUITES, evaluate, evaluate_path
from vitrobust.evaluate.corruptions import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    alexnet_reference,
    corruption_errors,
    mean_ce,
    relative_corruption_errors,
    score,
)
from vitrobust.figures.corruptions import accuracy_vs_severity, mean_by_severity
from vitrobust.models import build_model

PNG = b"\x89PNG\r\n\x1a\n"
WNIDS = ["n01440764", "n01443537", "n01484850"]
LEVELS = [20, 110, 200]  # grey level of each class's flat images

pytestmark = pytest.mark.usefixtures("one_thread")


class LevelOracle(nn.Module):
    """Predicts the class whose grey level is nearest the image's mean pixel: 100% on flat class images."""

    def __init__(self):
        super().__init__()
        self.register_buffer("levels", torch.tensor(LEVELS, dtype=torch.float32) / 255)
        self.eval()

    def forward(self, x):
        return -(x.mean(dim=(1, 2, 3))[:, None] - self.levels).abs()


def flat(level: int, size: int = 32, channels: int = 3) -> np.ndarray:
    return np.full((size, size, channels), level, dtype=np.uint8)


def image_set(images: np.ndarray, labels: list[int], classes: list[str], name: str = "toy") -> ImageSet:
    """An in-memory ImageSet from NHWC uint8 images."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    c = x.shape[1]
    return ImageSet(
        labels=torch.tensor(labels),
        classes=classes,
        img_size=x.shape[-1],
        in_chans=c,
        mean=(0.5,) * c,
        std=(0.5,) * c,
        images=x,
        name=name,
        info={"root": f"/toy/{name}"},
    )


def cfg_with(*overrides: str):
    return load_config(None, list(overrides))


def random_images(n: int = 6, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    )


# --- generation ------------------------------------------------------------------------------


def test_all_nineteen_corruptions_run_at_every_severity_on_32px():
    image = random_images(1)
    for name in GROUPS["all"]:
        for severity in range(1, 6):
            out = corrupt_images(image, name, severity, seed=0)
            assert out.dtype == torch.uint8 and out.shape == image.shape, (name, severity)
            assert not torch.equal(out, image), f"{name} severity {severity} left the image unchanged"
    assert len(GROUPS["all"]) == 19 and len(GROUPS["common"]) == 15


def test_grey_images_are_corrupted_as_rgb_keeping_the_first_channel():
    grey = random_images(3, channels=1)
    for name in ("gaussian_noise", "fog", "spatter"):
        out = corrupt_images(grey, name, 4, seed=3)
        rgb = corrupt_images(grey.repeat(1, 3, 1, 1), name, 4, seed=3)
        assert out.shape == grey.shape
        assert torch.equal(out, rgb[:, :1]), name


def test_seeding_is_per_image_and_leaves_the_global_rng_alone():
    images = random_images(8)
    state = np.random.get_state()
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "frost"):
        first = corrupt_images(images, name, 3, seed=5)
        assert torch.equal(first, corrupt_images(images, name, 3, seed=5)), name
        # the second half alone, with its dataset indices, gives the same bytes: no batch-layout dependence
        assert torch.equal(first[4:], corrupt_images(images[4:], name, 3, seed=5, indices=range(4, 8))), name
        assert not torch.equal(first, corrupt_images(images, name, 3, seed=6)), name
    assert all(np.array_equal(a, b) for a, b in zip(state, np.random.get_state()))


def test_two_workers_give_the_bytes_of_zero_workers():
    images = random_images(7)
    with CorruptionPool(images, workers=0) as serial, CorruptionPool(images, workers=2) as parallel:
        for name, severity in (("shot_noise", 2), ("motion_blur", 5), ("elastic_transform", 1)):
            assert torch.equal(serial.corrupt(name, severity, 11), parallel.corrupt(name, severity, 11)), name


def test_bad_names_severities_and_sizes_are_clear_errors():
    with pytest.raises(InputError, match="did you mean 'fog'"):
        corruption_names(["fgo"])
    with pytest.raises(InputError, match="twice"):
        corruption_names(["fog", "fog"])
    assert corruption_names("extra") == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    with pytest.raises(InputError, match="among 1..5"):
        corrupt_images(random_images(1), "fog", 6)
    with pytest.raises(InputError, match=r"are 28x28: set data.img_size >= 32"):
        corrupt_images(random_images(1, size=28), "fog", 1)


# --- the benchmark on generated corruptions --------------------------------------------------


@pytest.fixture
def tiny_vit(tiny_spec):
    torch.manual_seed(0)
    return build_model(tiny_spec).eval()


GEN = [
    "evaluate.corruptions.names=[gaussian_noise,contrast]",
    "evaluate.corruptions.severities=[1,5]",
    "evaluate.corruptions.subset=6",
]


def test_benchmark_on_fashion_mnist_with_a_vit(tiny_idx_root, tiny_vit, tmp_path):
    cfg = cfg_with(f"data.root={tiny_idx_root}", *GEN)
    res = evaluate(tiny_vit, "corruptions", cfg=cfg, device="cpu")["corruptions"]
    assert res["n"] == 6 and res["severities"] == [1, 5] and res["source"] == "generate" and res["seed"] == 0
    assert set(res["per_corruption"]) == {"gaussian_noise", "contrast"}
    accs = [v for p in res["per_corruption"].values() for v in p.values()]
    assert all(k in ("1", "5") for p in res["per_corruption"].values() for k in p)
    assert all(round(6 * a) == pytest.approx(6 * a) for a in accs)  # fractions of 6 images
    assert res["mean_top1"] == pytest.approx(sum(accs) / 4)
    assert res["mce"] is None and res["relative_mce"] is None and res["reference"] is None
    assert "reference" in res["notes"][0] and res["figures"] == []
    again = evaluate(tiny_vit, "corruptions", cfg=cfg, device="cpu")["corruptions"]
    assert again["per_corruption"] == res["per_corruption"]


def test_this_run_as_reference_gives_mce_100_and_draws_the_figure(tiny_idx_root, tiny_vit, tmp_path):
    run = tmp_path / "baseline"
    cfg = cfg_with(
        f"data.root={tiny_idx_root}", *GEN, f"evaluate.corruptions.reference={run}", "name=baseline"
    )
    res = evaluate(tiny_vit, "corruptions", cfg=cfg, device="cpu", out_dir=run / "figures")["corruptions"]
    assert not (run / "results.json").exists()
    assert res["mce"] == 100.0 and res["relative_mce"] == 100.0 and res["reference"] == "baseline"
    assert res["ce"] == {"gaussian_noise": 1.0, "contrast": 1.0}
    assert res["figures"] == ["accuracy_vs_severity.png"]
    assert (run / "figures" / "accuracy_vs_severity.png").read_bytes()[:8] == PNG


def test_small_images_are_resized_to_img_size_or_refused():
    images = np.stack([flat(LEVELS[k], size=28, channels=1) for k in (0, 1, 2)])
    data = image_set(images, [0, 1, 2], ["a", "b", "c"])
    opts = ["evaluate.corruptions.names=[brightness]", "evaluate.corruptions.severities=[1]"]
    with pytest.raises(InputError, match=r"are 28x28: set data.img_size >= 32"):
        evaluate(LevelOracle(), "corruptions", cfg=cfg_with(*opts), data=data, device="cpu")
    res = evaluate(
        LevelOracle(), "corruptions", cfg=cfg_with(*opts, "data.img_size=32"), data=data, device="cpu"
    )
    assert res["corruptions"]["clean_top1"] == 1.0 and res["corruptions"]["n"] == 3


def test_cache_is_reused_and_a_damaged_file_is_regenerated(tiny_idx_root, tiny_vit, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = cfg_with(f"data.root={tiny_idx_root}", *GEN, f"evaluate.corruptions.cache={cache}")
    first = evaluate(tiny_vit, "corruptions", cfg=cfg, device="cpu")["corruptions"]
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 4 and all("fashion_mnist" in f.name and "n6-seed0-32x32" in f.name for f in files)
    original = {f: load_file(f)["images"] for f in files}
    raw = {f: f.read_bytes() for f in files[:2]}

    real = CorruptionPool.corrupt
    monkeypatch.setattr(CorruptionPool, "corrupt", lambda *a, **k: pytest.fail("generated despite the cache"))
    cached = evaluate(tiny_vit, "corruptions", cfg=cfg, device="cpu")["corruptions"]
    assert cached["per_corruption"] == first["per_corruption"] and cached["generated_img_per_s"] is None

    files[0].write_bytes(raw[files[0]][:-50])  # truncated
    flipped = bytearray(raw[files[1]])
    flipped[-1] ^= 0xFF  # same size, one pixel changed
    files[1].write_bytes(bytes(flipped))
    monkeypatch.setattr(CorruptionPool, "corrupt", real)
    with pytest.warns(CacheWarning) as caught:
        again = evaluate(tiny_vit, "corruptions", cfg=cfg, device="cpu")["corruptions"]
    messages = " | ".join(str(c.message) for c in caught)
    assert len(caught) == 2 and "unreadable" in messages and "checksum mismatch" in messages, messages
    assert again["per_corruption"] == first["per_corruption"]
    assert all(np.array_equal(load_file(f)["images"], original[f]) for f in files)  # rewritten, same images


def test_cache_key_separates_seed_size_and_subset():
    data = image_set(np.stack([flat(1)] * 2), [0, 0], ["a"])
    cache = CorruptionCache("/tmp/unused")
    base = cache.path(cache_key(data, 2, "fog", 1, 0, (32, 32)))
    others = [
        cache_key(data, 2, "fog", 1, 1, (32, 32)),
        cache_key(data, 3, "fog", 1, 0, (32, 32)),
        cache_key(data, 2, "fog", 1, 0, (64, 64)),
        cache_key(data, 2, "fog", 2, 0, (32, 32)),
    ]
    assert len({base, *(cache.path(k) for k in others)}) == 5


# --- published files ------------------------------------------------------------------------


def _clean_imagenet(size: int = 36) -> ImageSet:
    labels = [0, 0, 1, 1, 2, 2]
    return image_set(np.stack([flat(LEVELS[y], size) for y in labels]), labels, WNIDS, name="imagefolder")


def _imagenet_c_tree(root: Path, names: list[str], size: int = 36) -> Path:
    """root/<c>/<s>/<wnid>/<k>.JPEG, flat images of the class level; gaussian_noise severity 5 draws
    class 0's two images at class 2's level (so 2 of 6 are misclassified there)."""
    for name in names:
        for severity in range(1, 6):
            for label, wnid in enumerate(WNIDS):
                folder = root / name / str(severity) / wnid
                folder.mkdir(parents=True)
                level = LEVELS[2] if (name, severity, label) == ("gaussian_noise", 5, 0) else LEVELS[label]
                for k in range(2):
                    Image.fromarray(flat(level, size)).save(
                        folder / f"ILSVRC2012_val_{label}{k}.JPEG", quality=95
                    )
    return root


def test_imagenet_c_tree_is_read_as_is_and_scored_against_alexnet(tmp_path):
    root = _imagenet_c_tree(tmp_path / "imagenet-c", ["gaussian_noise", "fog"])
    clean = _clean_imagenet()
    one = load_imagenet_c(str(root), "fog", 2, 6, clean)
    assert one.img_size == 36 and one.labels.tolist() == [0, 0, 1, 1, 2, 2]
    decoded = np.array(Image.open(root / "fog" / "2" / WNIDS[1] / "ILSVRC2012_val_10.JPEG").convert("RGB"))
    assert torch.equal(one.sample(2), torch.from_numpy(decoded).permute(2, 0, 1))  # no resize, no crop

    cfg = cfg_with(
        "evaluate.corruptions.source=imagenet-c",
        f"evaluate.corruptions.root={root}",
        "evaluate.corruptions.names=[gaussian_noise,fog]",
    )
    res = evaluate(LevelOracle(), "corruptions", cfg=cfg, data=clean, device="cpu")["corruptions"]
    assert res["clean_top1"] == 1.0 and res["n"] == 6 and res["source"] == "imagenet-c"
    assert res["per_corruption"]["fog"] == {str(s): 1.0 for s in range(1, 6)}
    assert res["per_corruption"]["gaussian_noise"] == {
        "1": 1.0,
        "2": 1.0,
        "3": 1.0,
        "4": 1.0,
        "5": pytest.approx(4 / 6),
    }
    assert res["reference"].startswith("AlexNet")
    # CE_gn = (1/3) / (5 * 0.886428) = 0.0752085; CE_fog = 0
    assert res["ce"]["gaussian_noise"] == pytest.approx(0.0752085, abs=1e-6) and res["ce"]["fog"] == 0.0
    assert res["mce"] == pytest.approx(100 * 0.0752085 / 2, abs=1e-4)
    # relative: (1/3 - 0) / (5 * (0.886428 - 0.43478)) = 0.1476076
    assert res["relative_ce"]["gaussian_noise"] == pytest.approx(0.1476076, abs=1e-6)
    assert res["relative_mce"] == pytest.approx(100 * 0.1476076 / 2, abs=1e-4)

    partial = evaluate(
        LevelOracle(),
        "corruptions",
        cfg=cfg_with(*cfg_overrides(root), "evaluate.corruptions.severities=[1,2]"),
        data=clean,
        device="cpu",
    )["corruptions"]
    assert partial["mce"] is None and "severities 1-5" in partial["notes"][0]


def cfg_overrides(root: Path) -> list[str]:
    return [
        "evaluate.corruptions.source=imagenet-c",
        f"evaluate.corruptions.root={root}",
        "evaluate.corruptions.names=[fog]",
    ]


def test_imagenet_c_errors_name_the_fix(tmp_path):
    root = _imagenet_c_tree(tmp_path / "imagenet-c", ["fog"])
    with pytest.raises(DatasetError, match=r"snow.*does not exist"):
        load_imagenet_c(str(root), "snow", 1, 6, _clean_imagenet())
    with pytest.raises(DatasetError, match="holds 6 images, fewer than the 7"):
        load_imagenet_c(str(root), "fog", 1, 7, _clean_imagenet())
    shuffled = _clean_imagenet()
    shuffled.labels = torch.tensor([0, 1, 0, 1, 2, 2])
    with pytest.raises(DatasetError, match="sample 1 has label 0"):
        load_imagenet_c(str(root), "fog", 1, 6, shuffled)


def _cifar_c(root: Path, per: int = 6) -> tuple[Path, ImageSet]:
    """contrast.npy and snow.npy (5 x 6 flat images); contrast severity 3 draws every image at class 0's
    level, so labels 1 and 2 (4 of 6) are misclassified there."""
    labels = [k % 3 for k in range(per)]
    root.mkdir(parents=True)
    for name in ("contrast", "snow"):
        stack = []
        for severity in range(1, 6):
            levels = [LEVELS[0] if (name, severity) == ("contrast", 3) else LEVELS[y] for y in labels]
            stack += [flat(level) for level in levels]
        np.save(root / f"{name}.npy", np.stack(stack))
    np.save(root / "labels.npy", np.array(labels * 5, dtype=np.uint8))
    clean = image_set(np.stack([flat(LEVELS[y]) for y in labels]), labels, ["a", "b", "c"], name="cifar10")
    return root, clean


def test_cifar_c_files_with_and_without_a_reference_run(tmp_path):
    root, clean = _cifar_c(tmp_path / "CIFAR-10-C")
    opts = [
        "evaluate.corruptions.source=cifar-c",
        f"evaluate.corruptions.root={root}",
        "evaluate.corruptions.names=[contrast,snow]",
        "evaluate.corruptions.severities=[1,3]",
    ]
    res = evaluate(LevelOracle(), "corruptions", cfg=cfg_with(*opts), data=clean, device="cpu")["corruptions"]
    assert res["per_corruption"] == {
        "contrast": {"1": 1.0, "3": pytest.approx(2 / 6)},
        "snow": {"1": 1.0, "3": 1.0},
    }
    assert res["mean_top1"] == pytest.approx((3 + 2 / 6) / 4)
    assert res["mce"] is None and res["reference"] is None and res["ce"] == {}

    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref_entry = {
        "n": 6,
        "severities": [1, 3],
        "source": "cifar-c",
        "clean_top1": 0.9,
        "per_corruption": {"contrast": {"1": 0.8, "3": 0.2}, "snow": {"1": 0.7, "3": 0.5}},
    }
    (ref_dir / "results.json").write_text(json.dumps({"corruptions": ref_entry, "meta": {"run": "base"}}))
    scored = evaluate(
        LevelOracle(),
        "corruptions",
        cfg=cfg_with(*opts, f"evaluate.corruptions.reference={ref_dir}"),
        data=clean,
        device="cpu",
    )["corruptions"]
    # contrast: (0 + 2/3) / (0.2 + 0.8) = 0.666667; snow: 0 / (0.3 + 0.5) = 0
    assert scored["reference"] == "base" and scored["ce"] == {"contrast": pytest.approx(2 / 3), "snow": 0.0}
    assert scored["mce"] == pytest.approx(100 / 3)
    # relative: contrast (2/3 - 0) / ((0.2 - 0.1) + (0.8 - 0.1)) = 0.833333; snow 0
    assert scored["relative_ce"]["contrast"] == pytest.approx(2 / 3 / 0.8)
    assert scored["relative_mce"] == pytest.approx(100 * (2 / 3 / 0.8) / 2)

    other = dict(ref_entry, severities=[1, 2, 3])
    (ref_dir / "results.json").write_text(json.dumps({"corruptions": other, "meta": {"dataset": "cifar100"}}))
    with pytest.raises(
        InputError, match=r"severities: \[1, 2, 3\] there, \[1, 3\] here.*dataset.*same settings"
    ):
        evaluate(
            LevelOracle(),
            "corruptions",
            cfg=cfg_with(*opts, f"evaluate.corruptions.reference={ref_dir}"),
            data=clean,
            device="cpu",
        )
    with pytest.raises(InputError, match="does not exist; evaluate it first"):
        evaluate(
            LevelOracle(),
            "corruptions",
            cfg=cfg_with(*opts, f"evaluate.corruptions.reference={tmp_path / 'x'}"),
            data=clean,
            device="cpu",
        )


def test_cifar_c_bad_files_are_clear_errors(tmp_path):
    root, clean = _cifar_c(tmp_path / "c")
    np.save(root / "snow.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    opts = [
        "evaluate.corruptions.source=cifar-c",
        f"evaluate.corruptions.root={root}",
        "evaluate.corruptions.names=[snow]",
    ]
    with pytest.raises(DatasetError, match=r"5 x N"):
        evaluate(LevelOracle(), "corruptions", cfg=cfg_with(*opts), data=clean, device="cpu")
    with pytest.raises(DatasetError, match="needs evaluate.corruptions.root"):
        evaluate(LevelOracle(), "corruptions", cfg=cfg_with(opts[0]), data=clean, device="cpu")


# --- mCE arithmetic --------------------------------------------------------------------------


def test_mce_arithmetic_against_hand_computed_numbers():
    errors = {"a": [0.2, 0.4], "b": [0.5, 0.5]}
    ref = {"a": [0.4, 0.4], "b": [0.5, 1.0]}
    ce = corruption_errors(errors, ref)
    assert ce == {"a": pytest.approx(0.75), "b": pytest.approx(1.0 / 1.5)}
    assert mean_ce(ce) == pytest.approx(100 * (0.75 + 2 / 3) / 2)  # 70.8333
    rel = relative_corruption_errors(errors, 0.1, ref, 0.2)
    # a: (0.1 + 0.3) / (0.2 + 0.2) = 1; b: (0.4 + 0.4) / (0.3 + 0.8) = 0.727273
    assert rel == {"a": pytest.approx(1.0), "b": pytest.approx(0.8 / 1.1)}
    assert mean_ce(rel) == pytest.approx(100 * (1 + 0.8 / 1.1) / 2)
    assert (
        corruption_errors({"a": [0.1]}, {"a": [0.0]}) == {"a": None}
        and mean_ce({"a": None, "b": 1.0}) is None
    )
    assert relative_corruption_errors({"a": [0.3]}, 0.1, {"a": [0.2]}, 0.2) == {"a": None}


def test_a_denominator_of_float_rounding_is_zero():
    # errors from float32 means, as the corruption benchmark reads them: the reference is right on 60 of
    # 100 clean images, 59 and 61 at two severities, so it lost nothing; the float sum is 6e-8, not 0
    def error(right: int) -> float:
        return 1 - (torch.arange(100) < right).float().mean().item()
    severities = [error(59), error(61)]
    assert sum(e - error(60) for e in severities) > 0  # the rounding this test is about
    assert relative_corruption_errors({"a": [0.3, 0.3]}, 0.1, {"a": severities}, error(60)) == {"a": None}
    assert corruption_errors({"a": [0.1]}, {"a": [1e-7]}) == {"a": None}
    # one image of 50,000 (ImageNet-C's smallest real difference) still counts
    rel = relative_corruption_errors({"a": [0.3]}, 0.1, {"a": [0.2 + 2e-5]}, 0.2)
    assert rel["a"] == pytest.approx(0.2 / 2e-5)


def test_a_model_with_alexnets_errors_scores_100():
    names = ["gaussian_noise", "fog", "saturate"]
    per = {n: {str(s): 1 - ALEXNET_ERRORS[n] for s in range(1, 6)} for n in names[:2]}
    per["saturate"] = {str(s): 0.5 for s in range(1, 6)}
    result = score(per, 1 - ALEXNET_CLEAN_ERROR, alexnet_reference(names, [1, 2, 3, 4, 5]))
    assert result["mce"] == pytest.approx(100.0) and result["relative_mce"] == pytest.approx(100.0)
    assert set(result["ce"]) == {"gaussian_noise", "fog"} and "saturate" in result["notes"][0]


def test_benchmark_is_in_its_suites():
    for suite in ("corruptions", "quick", "imagenet"):
        assert "corruptions" in SUITES[suite]


# --- figure ----------------------------------------------------------------------------------


def test_accuracy_vs_severity_figure(tmp_path):
    a = {
        "clean_top1": 0.9,
        "mce": 100.0,
        "per_corruption": {"fog": {"1": 0.8, "2": 0.6}, "snow": {"1": 0.4, "2": 0.2}},
    }
    b = {"clean_top1": 0.7, "per_corruption": {"fog": {"1": 0.7, "2": 0.7}, "snow": {"1": 0.5, "2": 0.3}}}
    assert mean_by_severity(a) == {1: pytest.approx(0.6), 2: pytest.approx(0.4)}
    for per_corruption in (False, True):
        path = accuracy_vs_severity(
            {"a": a, "b": b}, tmp_path / f"f{per_corruption}.png", per_corruption=per_corruption
        )
        assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="per_corruption"):
        accuracy_vs_severity({"a": {"clean_top1": 0.5}}, tmp_path / "x.png")


# --- two runs through evaluate_path (what `vitrobust evaluate RUN --suite corruptions` does) ----------


def _run_dir(path: Path, spec: dict, seed: int, overrides: list[str]) -> Path:
    torch.manual_seed(seed)
    model = build_model(spec)
    cfg = cfg_with(*overrides)
    save_weights(model, path / "model.safetensors", spec, cfg.to_yaml())
    return path


def test_every_run_against_the_baseline_run(tiny_idx_root, tiny_spec, tmp_path):
    base, other = tmp_path / "baseline", tmp_path / "other"
    shared = [f"data.root={tiny_idx_root}", *GEN, f"evaluate.corruptions.reference={base}"]
    _run_dir(base, tiny_spec, 0, [*shared, "name=baseline"])
    _run_dir(other, tiny_spec, 1, [*shared, "name=other"])
    first, path = evaluate_path(base, "corruptions")
    assert path == base / "results.json" and first["corruptions"]["mce"] == 100.0
    assert (base / "figures" / "accuracy_vs_severity.png").is_file()
    second, _ = evaluate_path(other, "corruptions")
    mine, ref = second["corruptions"], json.loads(path.read_text())["corruptions"]
    assert mine["reference"] == "baseline" and mine["reference_path"] == str(base)
    errors = {c: [1 - v for v in accs.values()] for c, accs in mine["per_corruption"].items()}
    ref_errors = {c: [1 - v for v in accs.values()] for c, accs in ref["per_corruption"].items()}
    expected = {c: sum(errors[c]) / sum(ref_errors[c]) for c in errors}
    assert mine["ce"] == pytest.approx(expected)
    assert mine["mce"] == pytest.approx(100 * sum(expected.values()) / 2)
