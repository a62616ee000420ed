"""Project configuration: the ``[tool.robustness]`` table of the rootdir's ``pyproject.toml``.

A project that adopts the gate names its implementation once instead of on every command::

    [tool.robustness]
    target = "mypkg.losses:MultiTaskLoss"
    metrics = "mypkg.metrics"          # or false: a loss-only project, metric rules deselected
    gathered_loss = "mypkg.distributed:gathered_base_loss"
    profile = "dev"                    # dev | ci | thorough
    rules = ["C-MASK", "C-STREAM-3"]   # ids or family prefixes; absent: every rule
    skip_rules = ["C-DDP"]
    known = "robustness-known.json"    # the known-violations file (paths: from the rootdir)
    repro_dir = ".robustness/repros"

Both faces read it, the gate (``python -m robustness gate``, rootdir = the current directory)
and the pytest plugin (pytest's rootdir). Precedence, highest first: a command-line option,
then the environment variable that stands in for it (``ROBUSTNESS_TARGET``, ...), then this
table, then the built-in default. An unknown key or a value of the wrong type is a one-line
:class:`ConfigError` naming the key and what it accepts.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustness.errors import HarnessUsageError

__all__ = [
    "CONFIG_FILE",
    "KEYS",
    "METRICS_NONE",
    "PROFILE_CHOICES",
    "ConfigError",
    "RobustnessConfig",
    "gate_defaults",
    "load_config",
    "metrics_disabled",
    "parse_table",
]

CONFIG_FILE = "pyproject.toml"
#: ``--metrics none`` (or ``metrics = false``): check the loss only.
METRICS_NONE = "none"
PROFILE_CHOICES = ("dev", "ci", "thorough")

#: Every key of ``[tool.robustness]`` and what it accepts (quoted in errors).
KEYS: dict[str, str] = {
    "target": "a string 'module:Class'",
    "metrics": "a module path string, or false for a loss-only project",
    "gathered_loss": "a string 'module:function'",
    "profile": f"one of {', '.join(repr(p) for p in PROFILE_CHOICES)}",
    "rules": 'a list of rule ids or prefixes, e.g. ["C-MASK", "C-STREAM-3"]',
    "skip_rules": 'a list of rule ids or prefixes, e.g. ["C-DDP"]',
    "known": "a path string (relative to the rootdir)",
    "repro_dir": "a path string (relative to the rootdir)",
}


class ConfigError(HarnessUsageError):
    """``[tool.robustness]`` holds an unknown key or a value of the wrong type."""


def metrics_disabled(spec: str | None) -> bool:
    """Whether a metrics spec means "no metrics target" (``none``, any case)."""
    return spec is not None and spec.strip().lower() == METRICS_NONE


@dataclass(frozen=True)
class RobustnessConfig:
    """The validated ``[tool.robustness]`` table; ``None`` where a key is absent.

    Attributes:
        path: the ``pyproject.toml`` it was read from (``None``: no file or no table).
        metrics: a module path, or :data:`METRICS_NONE` for ``metrics = false``.
        known, repro_dir: resolved against the file's directory.
    """

    path: Path | None = None
    target: str | None = None
    metrics: str | None = None
    gathered_loss: str | None = None
    profile: str | None = None
    rules: tuple[str, ...] | None = None
    skip_rules: tuple[str, ...] | None = None
    known: Path | None = None
    repro_dir: Path | None = None
    present: frozenset[str] = field(default_factory=frozenset)

    def value(self, key: str, env: str | None = None) -> Any:
        """The environment variable ``env`` if set, else this table's ``key`` (or ``None``)."""
        if env:
            from_env = os.environ.get(env)
            if from_env:
                return from_env
        return getattr(self, key)

    def rules_text(self, key: str) -> str | None:
        """``rules`` / ``skip_rules`` as the comma-separated text the options take."""
        rules = getattr(self, key)
        return ",".join(rules) if rules else None


def _error(path: Path, key: str, got: object) -> ConfigError:
    return ConfigError(
        f"{path}: [tool.robustness] {key} = {got!r} is not allowed: expected {KEYS[key]}"
    )


def _string(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(path, key, value)
    return value.strip()


def _rule_list(path: Path, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _error(path, key, value)
    return tuple(v.strip() for v in value)


def parse_table(table: Mapping[str, Any], path: Path) -> RobustnessConfig:
    """Validate a ``[tool.robustness]`` table read from ``path``.

    Raises:
        ConfigError: naming the first unknown key or badly typed value.
    """
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r} in [tool.robustness] (allowed: {', '.join(KEYS)})"
        )
    values: dict[str, Any] = {}
    base = path.parent
    for key, value in table.items():
        if key == "metrics":
            if value is False:
                values[key] = METRICS_NONE
            else:
                values[key] = _string(path, key, value)
        elif key in ("target", "gathered_loss"):
            text = _string(path, key, value)
            if ":" not in text:
                raise _error(path, key, value)
            values[key] = text
        elif key == "profile":
            if value not in PROFILE_CHOICES:
                raise _error(path, key, value)
            values[key] = value
        elif key in ("rules", "skip_rules"):
            values[key] = _rule_list(path, key, value)
        else:  # known, repro_dir
            values[key] = base / _string(path, key, value)
    return RobustnessConfig(path=path, present=frozenset(table), **values)


def load_config(rootdir: Path | str | None = None) -> RobustnessConfig:
    """Read ``[tool.robustness]`` from ``rootdir/pyproject.toml`` (default: the current dir).

    A missing file or a file without the table gives an empty configuration.

    Raises:
        ConfigError: if the file is not valid TOML, or the table is not valid.
    """
    path = Path(rootdir if rootdir is not None else os.getcwd()) / CONFIG_FILE
    if not path.is_file():
        return RobustnessConfig()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as TOML: {exc}") from exc
    tool = document.get("tool", {})
    table = tool.get("robustness") if isinstance(tool, dict) else None
    if table is None:
        return RobustnessConfig()
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.robustness] must be a table, got {table!r}")
    return parse_table(table, path)


#: The environment variables that sit between a gate option and the table.
_GATE_ENV = {
    "target": "ROBUSTNESS_TARGET",
    "metrics": "ROBUSTNESS_METRICS",
    "repro_dir": "ROBUSTNESS_REPRO_DIR",
}


def gate_defaults(config: RobustnessConfig) -> dict[str, Any]:
    """The gate's parser defaults from ``config``: ``parser.set_defaults(**gate_defaults(c))``.

    Only keys the table sets appear, so the gate's own defaults stand otherwise; where an
    environment variable stands in for the option it wins over the table (see the module
    docstring for the whole order).
    """
    defaults: dict[str, Any] = {}
    for key in ("target", "metrics", "profile", "known", "repro_dir"):
        if key in config.present:
            env = _GATE_ENV.get(key)
            from_env = os.environ.get(env) if env else None
            value = from_env or getattr(config, key)
            defaults[key] = Path(value) if key == "repro_dir" else value
    for key in ("rules", "skip_rules"):
        if key in config.present:
            defaults[key] = config.rules_text(key)
    return defaults
