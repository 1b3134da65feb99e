"""Study configurations: a dataclass of defaults, a YAML preset over it, command-line flags over both.

Every field of a study's config dataclass becomes a `--field-name` flag, so any preset value can be
overridden on the command line without each study writing its own argument parser. Named presets are
package data (`col775/configs/<study>/<name>.yaml`), so an installed package finds them from any folder.
A value is converted to its field's type only when nothing is lost (`epochs: 2.0` is 2; `epochs: 1.9`,
`batch_size: true` and `--epochs 1.5` are errors naming the field and where the value came from).
A preset may also give values for one kind of run only, in sections named after the kind (`load_config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PRESETS = files("col775") / "configs"


def preset_path(study: str, preset: str | Path) -> Traversable:
    """The YAML file of a preset: a path as given, or the packaged `col775/configs/<study>/<preset>.yaml`."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"preset file {path} does not exist")
        return path
    packaged = PRESETS / study / f"{preset}.yaml"
    if not packaged.is_file():
        folder = PRESETS / study
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        known = sorted(n.removesuffix(".yaml") for n in names if n.endswith(".yaml"))
        raise FileNotFoundError(f"no preset '{preset}' for {study} at {packaged}; known presets: {known}")
    return packaged


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _number(kind: type, value: Any, where: str) -> int | float:
    """`value` as an int or float field's number, refusing any conversion that changes it.

    Strings (command-line values) are parsed; a bool is not a number; an int field takes a float only
    when it is whole (2.0 is 2, 1.9 is an error rather than a silent 1).
    """
    number = value
    if isinstance(value, str):
        text = value.strip()
        for parse in (int, float):
            try:
                number = parse(text)
                break
            except ValueError:
                continue
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{where} expects {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is float:
        return float(number)
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(f"{where} expects an integer, got {value!r} (its fraction would be lost)")
    return int(number)


def _coerce(name: str, kind: Any, value: Any, source: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, with a clear error.

    `source` (a preset file or "command line") is named in the error with the field.
    """
    where = f"{source}: config field '{name}'"
    if value is None:
        return None
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, inner[0], value, source) if len(inner) == 1 else value
    if origin in (list, tuple):
        if isinstance(value, str):
            items = value.split(",")
        else:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
        items = [i for i in items if str(i).strip() != ""]
        element = args[0] if args else str
        converted = [_coerce(name, element, i, source) for i in items]
        return tuple(converted) if origin is tuple else converted
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where} expects true/false, got {value!r}")
    if kind in (int, float):
        return _number(kind, value, where)
    if kind is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float, Path)):
            raise ValueError(f"{where} expects text, got {value!r} (quote it in YAML)")
        return str(value)
    return value


def _checked(types_: dict[str, Any], values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` converted to their fields' types; unknown keys are an error (a typo must not pass silently)."""
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}; valid fields are {sorted(types_)}")
    return {k: _coerce(k, types_[k], v, source) for k, v in values.items()}


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a mapping read from `source`, which every error names."""
    return cls(**_checked(_field_types(cls), values, source))


def read_preset(path: Traversable) -> dict[str, Any]:
    """A preset file's mapping; a YAML syntax error names the file, line and column."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or error
        raise ValueError(f"{path}: invalid YAML{at}: {problem}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a preset must be a mapping of field: value")
    return loaded


def read_sections(cls: type, path: Traversable, sections: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, dict]]:
    """A preset's values for `cls`, converted and checked: its top level, and each of `sections` (a mapping
    of fields for one kind of run; {} where the preset has none). An unknown key anywhere names the file."""
    types_ = _field_types(cls)
    values = read_preset(path)
    parts = {}
    for name in sections:
        part = values.pop(name, None) or {}
        if not isinstance(part, dict):
            raise ValueError(f"{path}: '{name}:' must be a mapping of field: value")
        parts[name] = _checked(types_, part, f"{path}, section '{name}:'")
    return _checked(types_, values, str(path)), parts


def load_config(cls: type[T], study: str, preset: str | Path | None, overrides: dict[str, Any],
                sections: tuple[str, ...] = (), section_field: str | None = None) -> T:
    """Defaults of `cls`, then the preset's YAML (if any), then `overrides` (None values are ignored).

    A preset may hold `sections`, named after values of the field `section_field` (a model kind, a
    decoder): the section of the run's value of that field (from `overrides`, else the preset, else the
    default) applies over the preset's top level. `overrides` come last, so they win over every section.
    """
    given = _checked(_field_types(cls), {k: v for k, v in overrides.items() if v is not None}, "command line")
    values: dict[str, Any] = {}
    if preset is not None:
        values, parts = read_sections(cls, preset_path(study, preset), sections)
        if section_field is not None:
            default = {f.name: f.default for f in dataclasses.fields(cls)}[section_field]
            values |= parts.get(given.get(section_field, values.get(section_field, default)), {})
    return cls(**(values | given))


def add_config_args(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), aliases: dict[str, str] | None = None
) -> None:
    """One `--field-name` flag per dataclass field, defaulting to None so presets are not overridden.

    `aliases` gives a field a second flag (e.g. where a wrapper such as torchrun swallows a short one).
    """
    parser.add_argument("--preset", default=None, help="preset name (col775/configs/<study>/NAME.yaml) or a YAML path")
    group = parser.add_argument_group("config fields (override the preset)")
    for name, kind in _field_types(cls).items():
        if name in skip:
            continue
        flags = ["--" + name.replace("_", "-")] + ([aliases[name]] if aliases and name in aliases else [])
        if kind is bool:
            group.add_argument(*flags, dest=name, default=None, action=argparse.BooleanOptionalAction)
        else:
            group.add_argument(*flags, dest=name, default=None, metavar=name.upper())


def config_from_args(cls: type[T], args: argparse.Namespace, study: str, default_preset: str | None = None,
                     sections: tuple[str, ...] = (), section_field: str | None = None) -> T:
    """The config a command line asks for: defaults, preset (with its section, see `load_config`), then the
    explicit flags."""
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return load_config(cls, study, getattr(args, "preset", None) or default_preset, overrides, sections,
                       section_field)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists, paths strings)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
