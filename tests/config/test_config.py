"""Config schema and loader: every mistake names the key; recipes load; round trips are exact."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import yaml

from vmunet.config import (
    PACKAGED_CONFIGS,
    Config,
    check_data_paths,
    config_to_dict,
    load_config,
    save_config,
    valid_keys,
)
from vmunet.errors import ConfigError, InputFileError

REPO = Path(__file__).resolve().parents[2]
RECIPES = ("demo", "demo3d", "isic17", "isic18", "synapse", "synapse3d")


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_and_match_packaged_copy(name):
    user_copy = REPO / "configs" / f"{name}.yaml"
    assert filecmp.cmp(user_copy, PACKAGED_CONFIGS / f"{name}.yaml", shallow=False), (
        f"configs/{name}.yaml and vmunet/configs/{name}.yaml differ"
    )
    cfg = load_config(user_copy)
    assert load_config(name) == cfg  # a bare name resolves to the packaged copy


def test_paper_settings_in_isic_and_synapse_recipes():
    # The values of the paper / JCruan519/VM-UNet configs/config_setting*.py, typed out here independently.
    for name in ("isic17", "isic18"):
        c = load_config(name)
        assert (c.data.size, c.data.batch_size, c.train.epochs) == ([256, 256], 32, 300)
        assert (c.optim.name, c.optim.lr, c.optim.weight_decay) == ("adamw", 1e-3, 1e-2)
        assert (c.scheduler.name, c.scheduler.t_max, c.scheduler.eta_min) == ("cosine", 50, 1e-5)
        assert (c.loss.name, c.loss.ce_weight, c.loss.dice_weight) == ("bce_dice", 1.0, 1.0)
        paper_model = {"depths": [2, 2, 2, 2], "depths_decoder": [2, 2, 2, 1], "drop_path_rate": 0.2}
        assert c.model.overrides == paper_model
        assert c.eval.protocol == "isic" and c.model.out_channels == 1
    s = load_config("synapse")
    assert (s.data.size, s.model.out_channels) == ([224, 224], 9)
    assert (s.loss.name, s.scheduler.t_max) == ("ce_dice", 100)
    assert s.eval.protocol == "synapse"


def test_unknown_key_names_full_key_and_closest(tmp_path):
    p = _write(tmp_path, {"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'.*did you mean 'train\.epochs'"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"'optim\.weight_decy'.*'optim\.weight_decay'"):
        load_config(None, ["optim.weight_decy=0.1"])
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*'train'"):
        load_config(None, ["trian.epochs=1"])
    # A known leaf in the wrong place still points to where it belongs.
    with pytest.raises(ConfigError, match=r"'batch_size'.*'data\.batch_size'"):
        load_config(_write(tmp_path, {"batch_size": 4}))


def test_wrong_type_names_key_type_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"'train\.epochs' expects int, got 'ten' \(str\)"):
        load_config(_write(tmp_path, {"train": {"epochs": "ten"}}))
    with pytest.raises(ConfigError, match=r"'train\.amp' expects one of 'none', 'bf16', 'fp16', got 'fp32'"):
        load_config(None, ["train.amp=fp32"])
    with pytest.raises(ConfigError, match=r"'train\.channels_last' expects bool"):
        load_config(None, ["train.channels_last=1"])
    with pytest.raises(ConfigError, match=r"'data\.size\[1\]' expects int, got 2\.5"):
        load_config(None, ["data.size=[64, 2.5]"])
    with pytest.raises(ConfigError, match=r"'model' expects a mapping"):
        load_config(_write(tmp_path, {"model": "vmunet_small"}))
    with pytest.raises(ConfigError, match=r"'data\.batch_size' must be > 0"):
        load_config(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match=r"'loss\.name' is 'bce_dice'.*out_channels is 3"):
        load_config(None, ["model.out_channels=3", "loss.name=bce_dice"])


def test_overrides_are_yaml_scalars():
    cfg = load_config(
        None,
        [
            "train.epochs=7",
            "optim.lr=1e-4",  # PyYAML reads this as a string; still a float here
            "train.grad_clip=null",
            "data.size=[64, 96]",
            "model.overrides.drop_path_rate=0.1",
            "data.root=some/where",
            "train.compile=true",
        ],
    )
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.grad_clip is None and cfg.data.size == [64, 96] and cfg.train.compile is True
    assert cfg.model.overrides == {"drop_path_rate": 0.1} and cfg.data.root == "some/where"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_missing_data_path_names_key_and_path(tmp_path):
    missing = tmp_path / "nowhere"
    cfg = load_config(None, [f"data.root={missing}"])
    with pytest.raises(ConfigError, match=rf"'data\.root' points to '{missing}'"):
        check_data_paths(cfg)
    cfg = load_config(None, [f"data.root={tmp_path}", f"model.pretrained={missing}.pth"])
    with pytest.raises(ConfigError, match=r"'model\.pretrained'"):
        check_data_paths(cfg)
    check_data_paths(load_config(None, [f"data.root={tmp_path}"]))  # exists: fine


def test_save_then_load_round_trip(tmp_path):
    cfg = load_config("synapse", ["train.epochs=3", "data.root=x"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again)["train"]["epochs"] == 3


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(
        InputFileError, match="packaged recipes: demo, demo3d, isic17, isic18, synapse, synapse3d"
    ):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(InputFileError, match="not valid YAML"):
        load_config(bad)


def test_every_schema_field_is_a_valid_key():
    keys = set(valid_keys())
    flat = {f"{s}.{k}" for s, v in config_to_dict(Config()).items() if isinstance(v, dict) for k in v}
    assert flat - {"model.overrides", "data.normalization"} <= keys and "output_dir" in keys
