import argparse
from dataclasses import dataclass, field

import pytest

from col775.core.config import add_config_args, config_from_args, from_dict, load_config, to_dict


@dataclass
class Toy:
    lr: float = 0.1
    epochs: int = 3
    name: str = "a"
    amp: bool = False
    sizes: list[int] = field(default_factory=lambda: [1, 2])


def test_preset_then_flags_override(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 0.5\nepochs: 7\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser, Toy)
    args = parser.parse_args(["--preset", str(preset), "--epochs", "9", "--amp", "--sizes", "4,5"])
    config = config_from_args(Toy, args, study="toy")
    assert config == Toy(lr=0.5, epochs=9, name="a", amp=True, sizes=[4, 5])


def test_unknown_field_in_preset_is_an_error(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("learning_rate: 0.5\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(Toy, "toy", preset, {})


def test_bad_value_names_the_field():
    with pytest.raises(ValueError, match="epochs"):
        from_dict(Toy, {"epochs": "many"})


def test_missing_preset_names_the_path():
    with pytest.raises(FileNotFoundError, match="nope"):
        load_config(Toy, "resnet", "nope", {})


def test_to_dict_is_plain():
    assert to_dict(Toy()) == {"lr": 0.1, "epochs": 3, "name": "a", "amp": False, "sizes": [1, 2]}
