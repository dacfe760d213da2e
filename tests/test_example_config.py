"""config.example.yaml shows every key the configuration accepts."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from gateway.config import GatewayConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += models_in(arg)
    if isinstance(annotation, types.UnionType):
        for arg in annotation.__args__:
            found += models_in(arg)
    return found


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + name)
        for sub in models_in(field.annotation):
            out += keys(sub, f"{prefix}{name}.")
    return out


def test_every_key_appears_in_the_example() -> None:
    text = EXAMPLE.read_text()
    present = set(re.findall(r"^[#\s-]*([a-z_0-9]+):", text, flags=re.MULTILINE))
    missing = sorted({key for key in keys(GatewayConfig) if key.rsplit(".", 1)[-1] not in present})
    assert not missing, f"config.example.yaml lacks: {missing}"
