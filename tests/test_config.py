"""Config schema: unknown keys, --set overrides, base inheritance, shipped configs, YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vitrobust.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    apply_overrides,
    build_config,
    load_config,
    read_config_dict,
    resolve_config_path,
)

# run configs (sweeps/ holds grids for `vitrobust sweep`, tested in test_sweep.py)
SHIPPED = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml")
                 if p.relative_to(CONFIG_DIR).parts[0] != "sweeps")


def write_yaml(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# --- unknown keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "wrong", "closest"),
    [
        ({"seeed": 1}, "seeed", "seed"),
        ({"optim": {"lrr": 0.1}}, "optim.lrr", "optim.lr"),
        ({"data": {"batchsize": 8}}, "data.batchsize", "data.batch_size"),
        ({"train": {"epoch": 3}}, "train.epoch", "train.epochs"),
        ({"augment": {"hflp": True}}, "augment.hflp", "augment.hflip"),
        ({"objective": {"name": "standard", "label_smothing": 0.1}}, "label_smothing", "label_smoothing"),
    ],
)
def test_unknown_key_names_wrong_key_and_closest(raw, wrong, closest):
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    msg = str(info.value)
    assert repr(wrong) in msg or f"objective.{wrong}" in msg
    assert repr(closest) in msg


def test_unknown_objective_key_message_mentions_objective_section():
    with pytest.raises(ConfigError) as info:
        build_config({"objective": {"label_smothing": 0.1}})
    msg = str(info.value)
    assert "objective.label_smothing" in msg
    assert "'label_smoothing'" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"optim": {"lr": 0.1, "wieght_decay": 0.1}})
    with pytest.raises(ConfigError, match=r"optim\.wieght_decay.*did you mean 'optim\.weight_decay'"):
        load_config(path)


def test_unknown_key_via_override():
    with pytest.raises(ConfigError, match=r"'schedule\.min_l'.*'schedule\.min_lr'"):
        load_config(None, ["schedule.min_l=0.1"])


def test_unknown_objective_name_suggests():
    with pytest.raises(ConfigError, match=r"unknown objective 'standart'.*did you mean 'standard'"):
        build_config({"objective": {"name": "standart"}})


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# --- overrides -------------------------------------------------------------------------------


def test_overrides_parse_yaml_types():
    cfg = load_config(None, [
        "optim.lr=1e-3",
        "optim.weight_decay=0.25",
        "optim.betas=[0.8, 0.95]",
        "optim.clip_grad=null",
        "augment.crop_scale=[0.5, 1]",
        "augment.hflip=true",
        "data.train_subset=100",
        "model.mean=[0.5, 0.25, 0.125]",
        "model.kwargs={depth: 2}",
        "train.ema_decay=0.999",
        "name=my-run",
    ])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 0.25
    assert cfg.optim.betas == (0.8, 0.95)
    assert cfg.optim.clip_grad is None
    assert cfg.augment.crop_scale == (0.5, 1.0)
    assert cfg.augment.hflip is True
    assert cfg.data.train_subset == 100
    assert cfg.model.mean == [0.5, 0.25, 0.125]
    assert cfg.model.kwargs == {"depth": 2}
    assert cfg.train.ema_decay == 0.999
    assert cfg.name == "my-run"
    # untouched values keep their defaults
    assert cfg.optim.name == "adamw"
    assert cfg.data.batch_size == 128


def test_empty_override_value_is_null():
    assert load_config(None, ["data.root="]).data.root is None
    assert load_config(None, ["train.ema_decay=", "optim.clip_grad="]).optim.clip_grad is None


def test_apply_overrides_deep_merges_and_does_not_mutate():
    raw = {"optim": {"lr": 0.5, "name": "sgd"}, "seed": 3}
    out = apply_overrides(raw, ["optim.lr=0.01", "data.batch_size=16", "seed=7"])
    assert out == {"optim": {"lr": 0.01, "name": "sgd"}, "seed": 7, "data": {"batch_size": 16}}
    assert raw == {"optim": {"lr": 0.5, "name": "sgd"}, "seed": 3}
    # later overrides win
    assert apply_overrides({}, ["seed=1", "seed=2"]) == {"seed": 2}


def test_override_on_shipped_config():
    cfg = load_config("quickstart/baseline", ["optim.lr=2e-4", "train.epochs=1", "objective.label_smoothing=0.1"])
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.train.epochs == 1
    assert cfg.objective == {"name": "standard", "label_smoothing": 0.1, "loss": "ce"}
    assert cfg.model.name == "vit_pico_patch8_32"  # from the file


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["optim.lr"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=abc", "train.epochs"),
        ("optim.lr=-1", "optim.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("augment.crop=bogus", "augment.crop"),
        ("train.precision=fp8", "train.precision"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("augment.hflip=[1, 2]", "augment.hflip"),
        ("objective.label_smoothing=2.0", "objective.label_smoothing"),
        ("data=5", "data"),
    ],
)
def test_wrong_type_names_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


# --- base inheritance ------------------------------------------------------------------------


def test_base_relative_file(tmp_path):
    write_yaml(tmp_path / "parent.yaml", {"name": "parent", "seed": 5, "optim": {"lr": 0.1, "weight_decay": 0.2},
                                          "objective": {"name": "standard", "label_smoothing": 0.1}})
    child = write_yaml(tmp_path / "sub" / "child.yaml", {"base": "../parent.yaml", "name": "child",
                                                         "optim": {"lr": 0.01}})
    cfg = load_config(child)
    assert cfg.name == "child"
    assert cfg.seed == 5
    assert cfg.optim.lr == 0.01
    assert cfg.optim.weight_decay == 0.2  # deep-merged, not replaced
    assert cfg.objective == {"name": "standard", "label_smoothing": 0.1, "loss": "ce"}
    assert "base" not in read_config_dict(child)


def test_base_chain_of_three(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"seed": 1, "train": {"epochs": 2, "log_every": 3}})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml", "train": {"epochs": 4}})
    c = write_yaml(tmp_path / "c.yaml", {"base": "b.yaml", "seed": 9})
    cfg = load_config(c, ["train.log_every=7"])
    assert (cfg.seed, cfg.train.epochs, cfg.train.log_every) == (9, 4, 7)


def test_base_shipped_name(tmp_path):
    shipped = load_config("quickstart/baseline")
    child = write_yaml(tmp_path / "mine.yaml", {"base": "quickstart/baseline", "name": "mine",
                                                "train": {"epochs": 1}})
    cfg = load_config(child)
    assert cfg.name == "mine"
    assert cfg.train.epochs == 1
    assert cfg.optim.lr == shipped.optim.lr == pytest.approx(3e-3)
    assert cfg.train.eval_subset == shipped.train.eval_subset == 2000
    assert cfg.schedule == shipped.schedule


def test_objective_with_other_name_replaces_base_section(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"objective": {"name": "standard", "label_smoothing": 0.2}})
    b = write_yaml(tmp_path / "b.yaml", {"base": "a.yaml", "objective": {"label_smoothing": 0.3}})
    assert read_config_dict(b)["objective"] == {"name": "standard", "label_smoothing": 0.3}
    c = write_yaml(tmp_path / "c.yaml", {"base": "a.yaml", "objective": {"name": "other"}})
    assert read_config_dict(c)["objective"] == {"name": "other"}


def test_base_cycle_detected(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml", "seed": 1})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml", "seed": 2})
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")


def test_base_self_cycle_detected(tmp_path):
    path = write_yaml(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(path)


def test_missing_base_lists_shipped_configs(tmp_path):
    path = write_yaml(tmp_path / "a.yaml", {"base": "no/such/config"})
    with pytest.raises(ConfigError, match=r"'no/such/config' not found.*quickstart/baseline"):
        load_config(path)


def test_missing_config_name():
    with pytest.raises(ConfigError, match="quickstart/baseline"):
        resolve_config_path("quickstart/baselin")


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", "optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    seq = write_yaml(tmp_path / "seq.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(seq)


def test_empty_file_gives_defaults(tmp_path):
    empty = write_yaml(tmp_path / "empty.yaml", "")
    assert load_config(empty) == Config()


# --- shipped configs and round trip ----------------------------------------------------------


def test_shipped_configs_exist():
    assert "quickstart/baseline" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert load_config(CONFIG_DIR / f"{name}.yaml") == cfg


@pytest.mark.parametrize("name", [None, *SHIPPED])
def test_to_yaml_round_trip(tmp_path, name):
    cfg = load_config(name, ["optim.betas=[0.8, 0.9]", "augment.crop=rrc", "model.kwargs={depth: 2}",
                             "objective.label_smoothing=0.1", "train.ema_decay=0.99"])
    path = tmp_path / "dumped.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()
    objective = yaml.safe_load(cfg.to_yaml())["objective"]
    assert objective["label_smoothing"] == 0.1 and objective == cfg.objective
