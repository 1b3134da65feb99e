import argparse
from dataclasses import dataclass, field

import pytest
import yaml

from col775.core.config import add_config_args, config_from_args, from_dict, load_config, preset_path, to_dict


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


def test_named_presets_are_package_data():
    """Every study's demo and course presets load as package data (importlib.resources), not from the source tree."""
    from importlib.resources import files

    for study in ("resnet", "mathqa", "slots"):
        for preset in ("demo", "course"):
            path = preset_path(study, preset)
            assert path == files("col775") / "configs" / study / f"{preset}.yaml"
            assert yaml.safe_load(path.read_text())


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    preset = tmp_path / "broken.yaml"
    preset.write_text("lr: 0.5\nepochs: [1, 2\nname: x\n")  # the list is never closed
    with pytest.raises(ValueError) as error:
        load_config(Toy, "toy", preset, {})
    message = str(error.value)
    mark = None
    try:
        yaml.safe_load(preset.read_text())
    except yaml.MarkedYAMLError as reference:  # PyYAML's own position of the problem, 0-based
        mark = reference.problem_mark
    assert str(preset) in message
    assert f"line {mark.line + 1}, column {mark.column + 1}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("epochs: 1.9\n", "epochs"),  # int field, a fraction would be dropped
        ("epochs: true\n", "epochs"),  # a bool is not a number
        ("lr: false\n", "lr"),
        ("name: yes\n", "name"),  # YAML reads yes as a bool; str(True) would be "True"
        ("sizes: [1, 2.5]\n", "sizes"),
        ("epochs: .inf\n", "epochs"),
    ],
)
def test_lossy_preset_values_are_refused_with_field_and_file(tmp_path, text, field):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    with pytest.raises(ValueError, match=field) as error:
        load_config(Toy, "toy", preset, {})
    assert str(preset) in str(error.value)


@pytest.mark.parametrize(("flag", "value"), [("--epochs", "1.5"), ("--epochs", "2x"), ("--sizes", "4,5.5"), ("--lr", "fast")])
def test_lossy_command_line_values_are_refused(tmp_path, flag, value):
    preset = tmp_path / "p.yaml"
    preset.write_text("epochs: 4\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser, Toy)
    args = parser.parse_args(["--preset", str(preset), flag, value])
    with pytest.raises(ValueError, match=f"command line: config field '{flag[2:]}'"):
        config_from_args(Toy, args, study="toy")


def test_exact_conversions_are_kept(tmp_path):
    """Whole floats are integers (2.0 is 2, also on the command line); ints are floats; numbers are text."""
    preset = tmp_path / "p.yaml"
    preset.write_text("epochs: 2.0\nlr: 1\nname: 7\nsizes: [3.0, 4]\n")
    assert load_config(Toy, "toy", preset, {}) == Toy(lr=1.0, epochs=2, name="7", sizes=[3, 4])
    config = load_config(Toy, "toy", preset, {"epochs": "5.0", "lr": "1e-3"})
    assert (config.epochs, config.lr) == (5, 0.001)
    assert type(config.epochs) is int and type(config.lr) is float


def test_broken_preset_is_one_error_line_from_the_cli(tmp_path, capsys):
    from col775.cli import main

    preset = tmp_path / "broken.yaml"
    preset.write_text("epochs: [1, 2\nlr: 0.1\n")
    assert main(["resnet", "train", "--preset", str(preset), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("col775: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"col775: error: {preset}: invalid YAML at line 2"), err


@dataclass
class Kinded:
    kind: str = "small"
    lr: float = 0.1
    epochs: int = 3


def test_a_preset_section_applies_to_its_kind_over_the_top_level_and_under_the_flags(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("lr: 0.5\nepochs: 4\nsmall:\n  lr: 0.2\nlarge:\n  lr: 0.3\n  epochs: 8\n")

    def load(overrides):
        return load_config(Kinded, "toy", preset, overrides, ("small", "large"), "kind")

    assert load({}) == Kinded("small", 0.2, 4)  # the default kind's section
    assert load({"kind": "large"}) == Kinded("large", 0.3, 8)
    assert load({"kind": "large", "epochs": "2", "lr": None}) == Kinded("large", 0.3, 2)  # a flag beats its section
    preset.write_text("kind: large\nlarge:\n  epochs: 8\n")
    assert load({}) == Kinded("large", 0.1, 8)  # the preset's own kind picks the section
    assert load_config(Kinded, "toy", preset, {}, ("small", "large")) == Kinded("large", 0.1, 3)  # no section field


@pytest.mark.parametrize(("text", "match"), [
    ("large:\n  learning_rate: 0.3\n", r"p.yaml, section 'large:'.*unknown field.*learning_rate"),
    ("small:\n  epochs: 1.5\n", r"p.yaml, section 'small:'.*epochs"),  # checked though the run is not of that kind
    ("large: 3\n", r"p.yaml: 'large:' must be a mapping"),
    ("huge:\n  lr: 0.3\n", r"p.yaml: unknown field.*huge"),
])
def test_bad_sections_name_the_file_and_section(tmp_path, text, match):
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(Kinded, "toy", preset, {"kind": "large"}, ("small", "large"), "kind")
