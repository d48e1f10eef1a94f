from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rs_deeplab.cli.errors import ConfigError
from rs_deeplab.config.schema import (
    ExperimentConfig,
    InferConfig,
    apply_overrides,
    config_to_dict,
    dump_config,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_there_are_configs() -> None:
    assert CONFIGS, "configs/ must hold at least one experiment"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == yaml.safe_load(path.read_text()).get("name", path.stem)
    # the shipped files set keys explicitly: nothing in them is silently ignored
    assert config_to_dict(cfg)["data"]["scheme"] == cfg.data.scheme


def test_unknown_key_names_full_path_and_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "optimizer:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "optimizer.lrr" in msg and "unknown key" in msg
    assert "lr" in msg.split("allowed keys under optimizer:")[1]
    assert "\n" not in msg


def test_unknown_key_from_override_is_rejected(tmp_path: Path) -> None:
    path = REPO / "configs" / "potsdam_r50.yaml"
    with pytest.raises(ConfigError, match=r"optimizer\.lrr: unknown key \(given 0\.1\)"):
        load_config(path, ["optimizer.lrr=0.1"])


def test_wrong_type_and_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.lr: Input should be greater than 0 \(given -1\)"):
        load_config(write(tmp_path, "optimizer: {lr: -1}\n"))
    with pytest.raises(ConfigError, match=r"schedule\.iterations: .*integer.*\(given 'many'\)"):
        load_config(write(tmp_path, "schedule: {iterations: many}\n"))
    with pytest.raises(
        ConfigError, match=r"train\.amp: Input should be 'auto', 'none', 'bf16' or 'fp16' \(given 'fp8'\)"
    ):
        load_config(write(tmp_path, "train: {amp: fp8}\n"))


def test_cross_field_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"infer: .*stride \(600\) must not exceed size \(512\)"):
        load_config(write(tmp_path, "infer: {size: 512, stride: 600}\n"))
    with pytest.raises(ConfigError, match=r"scale_range"):
        load_config(write(tmp_path, "data: {scale_range: [2.0, 0.5]}\n"))


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = write(tmp_path, "data: {batch_size: 2}\n")
    cfg = load_config(path, ["data.batch_size=4", "data.bands=[1, 2, 3]", "train.compile=true", "name=run7"])
    assert cfg.data.batch_size == 4
    assert cfg.data.bands == [1, 2, 3]
    assert cfg.train.compile is True
    assert cfg.name == "run7"
    assert cfg.run_dir == Path("runs/run7")


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "seed: 3\n", "my_exp.yaml")).name == "my_exp"


@pytest.mark.parametrize(
    ("override", "needle"),
    [("optimizer", "expected key.sub=value"), ("=3", "expected key.sub=value"), ("a..b=1", "expected key.sub")],
)
def test_malformed_overrides(tmp_path: Path, override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(write(tmp_path, ""), [override])


def test_override_into_a_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match="seed is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    with pytest.raises(ValueError, match="frozen"):
        cfg.seed = 5  # type: ignore[misc]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="YAML syntax error at line 2"):
        load_config(write(tmp_path, "a: 1\nb: : c\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_dump_round_trip(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "potsdam_r50.yaml", ["optimizer.lr=0.02"])
    out = dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(out)
    assert again == cfg
    assert not list(tmp_path.glob(".*tmp*"))


def test_section_models_validate_alone() -> None:
    assert InferConfig(size=64, stride=64).stride == 64


def test_an_unknown_optimizer_is_one_line_naming_the_allowed_ones(tmp_path: Path) -> None:
    """A misspelt optimiser is refused at load time (it used to train with AdamW instead)."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "optimizer: {name: adam}\n"))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.endswith("exp.yaml: optimizer.name: Input should be 'sgd' or 'adamw' (given 'adam')")
    assert load_config(write(tmp_path, "optimizer: {name: adamw}\n", "ok.yaml")).optimizer.name == "adamw"
