"""The one reader of stack files (stacks/Pulumi.<stack>.yaml): the presets, and local stacks beside them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
STACKS_DIR = ROOT / "stacks"  # Pulumi.yaml's stackConfigDir
# CI's throwaway stacks (`pr-<n>`) keep their config files beside the presets; they are not presets.
EPHEMERAL_NAME = re.compile(r"^pr-[1-9][0-9]{0,9}$")


@dataclass(frozen=True)
class StackFile:
    name: str
    config: dict[str, Any]  # plain values, typed as the YAML holds them (lists, booleans, numbers)
    encrypted: tuple[str, ...]  # keys whose values are ciphertext (`secure:`), left out of `config`


def path(name: str) -> Path:
    return STACKS_DIR / f"Pulumi.{name}.yaml"


def names() -> list[str]:
    """Every preset: the stack files in stacks/, without CI's local pr-<n> ones."""
    found = (p.name[len("Pulumi."):-len(".yaml")] for p in STACKS_DIR.glob("Pulumi.*.yaml"))
    return sorted(n for n in found if not EPHEMERAL_NAME.match(n))


def read(name: str) -> StackFile:
    """A stack file's config; FileNotFoundError when there is none, yaml.YAMLError when it is broken."""
    document = yaml.safe_load(path(name).read_text()) or {}
    config, encrypted = {}, []
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            encrypted.append(key)
        else:
            config[key] = value
    return StackFile(name, config, tuple(encrypted))


def engine_values(stack_file: StackFile) -> dict[str, str]:
    """The plain config as the engine hands it to a program: strings, with lists and maps as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in stack_file.config.items()}
