"""Study configurations: a dataclass of defaults, a YAML preset over it, command-line flags over both.

Every field of a study's config dataclass becomes a `--field-name` flag, so any preset value can be
overridden on the command line without each study writing its own argument parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

CONFIG_ROOT = Path(__file__).resolve().parents[3] / "configs"


def preset_path(study: str, preset: str | Path) -> Path:
    """The YAML file of a preset: a path as given, or `configs/<study>/<preset>.yaml` of this checkout."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"preset file {path} does not exist")
        return path
    path = CONFIG_ROOT / study / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_ROOT / study).glob("*.yaml"))
        raise FileNotFoundError(f"no preset '{preset}' for {study} at {path}; known presets: {known}")
    return path


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's declared type, with a clear error."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, inner[0], value) if len(inner) == 1 else value
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i for i in items if str(i).strip() != ""]
        element = args[0] if args else str
        converted = [_coerce(name, element, i) for i in items]
        return tuple(converted) if origin is tuple else converted
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config field '{name}' expects true/false, got {value!r}")
    if kind in (int, float, str):
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"config field '{name}' expects {kind.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a mapping, rejecting unknown keys (a typo in a preset must not pass silently)."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}; valid fields are {sorted(types_)}")
    return cls(**{k: _coerce(k, types_[k], v) for k, v in values.items()})


def load_config(cls: type[T], study: str, preset: str | Path | None, overrides: dict[str, Any]) -> T:
    """Defaults of `cls`, then the preset's YAML (if any), then `overrides` (None values are ignored)."""
    values: dict[str, Any] = {}
    if preset is not None:
        path = preset_path(study, preset)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a preset must be a mapping of field: value")
        values.update(loaded)
        source = str(path)
    else:
        source = "command line"
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values, source)


def add_config_args(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), aliases: dict[str, str] | None = None
) -> None:
    """One `--field-name` flag per dataclass field, defaulting to None so presets are not overridden.

    `aliases` gives a field a second flag (e.g. where a wrapper such as torchrun swallows a short one).
    """
    parser.add_argument("--preset", default=None, help="preset name (configs/<study>/NAME.yaml) or a YAML path")
    group = parser.add_argument_group("config fields (override the preset)")
    for name, kind in _field_types(cls).items():
        if name in skip:
            continue
        flags = ["--" + name.replace("_", "-")] + ([aliases[name]] if aliases and name in aliases else [])
        if kind is bool:
            group.add_argument(*flags, dest=name, default=None, action=argparse.BooleanOptionalAction)
        else:
            group.add_argument(*flags, dest=name, default=None, metavar=name.upper())


def config_from_args(cls: type[T], args: argparse.Namespace, study: str, default_preset: str | None = None) -> T:
    """The config a command line asks for: defaults, preset, then the explicit flags."""
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return load_config(cls, study, getattr(args, "preset", None) or default_preset, overrides)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (tuples become lists, paths strings)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
