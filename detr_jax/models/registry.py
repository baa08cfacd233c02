"""Registries of detector parts, and building a part from its config sub-dict.

Each kind of part (backbone, neck, transformer, query generator, heads) has a `Registry`: a name
maps to a factory, a flax Module class or a `functools.partial` of one. A part is built from its
config sub-dict, e.g. `config.model.backbone = {"name": "resnet50", "width": 64, ...}`: `name`
picks the entry and every other field is passed as a keyword argument, unrenamed. A field the
part does not take is a start-up error naming it (`model.backbone.widht: not a field of
resnet50; fields: ...`), never a silent default.

Shared values (`hidden_dim`, `dtype`, `num_classes`, and what the builder derives, such as the
levels a neck reads) are given by the builder to the parts that declare such a field; a
sub-dict may not set them itself.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn

_MODULE_FIELDS = ("parent", "name")


class PartConfigError(ValueError):
    """A part's config sub-dict names an unknown part or a field the part does not take."""


def part_fields(factory: Callable[..., nn.Module]) -> tuple[str, ...]:
    """The keyword arguments a registered factory accepts (a Module's dataclass fields, less
    `parent` and `name`, and less those a `functools.partial` already fixes)."""
    fixed: set[str] = set()
    while isinstance(factory, functools.partial):
        fixed |= set(factory.keywords)
        factory = factory.func
    if not (isinstance(factory, type) and dataclasses.is_dataclass(factory)):
        raise TypeError(f"registered part {factory!r} is not a flax Module class")
    return tuple(
        f.name for f in dataclasses.fields(factory)
        if f.init and f.name not in _MODULE_FIELDS and f.name not in fixed
    )


class Registry(Mapping):
    """name -> part factory, for one kind of part (`kind` names it in messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._parts: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str, factory: Callable[..., nn.Module]) -> None:
        """Adds `factory` under `name` (one line in the kind's `__init__.py`)."""
        if name in self._parts:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        part_fields(factory)  # fails early for a factory that is not a Module class
        self._parts[name] = factory

    def unregister(self, name: str) -> None:
        """Removes `name` (for tests and notebooks that register a part for a while)."""
        if name not in self._parts:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        del self._parts[name]

    def __getitem__(self, name: str) -> Callable[..., nn.Module]:
        return self._parts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def problems(self, sub_config: Mapping[str, Any], field: str, shared: Mapping[str, Any]
                 ) -> list[str]:
        """One line per problem with `sub_config` (the config at `field`, e.g. model.backbone)."""
        if "name" not in sub_config:
            return [f"{field}.name is missing: choose one of {tuple(self)}"]
        name = sub_config["name"]
        if name not in self._parts:
            return [f"{field}.name={name!r}: choose one of {tuple(self)}"]
        accepted = part_fields(self._parts[name])
        lines = []
        for key in sub_config:
            if key == "name":
                continue
            if key in shared:
                lines.append(f"{field}.{key}: set by the builder for every part "
                             f"(model.{key} or derived), not in {field}")
            elif key not in accepted:
                settable = tuple(f for f in accepted if f not in shared)
                lines.append(f"{field}.{key}: not a field of {self.kind} {name!r}; "
                             f"its fields: {settable}")
        return lines

    def build(self, sub_config: Mapping[str, Any], field: str, **shared: Any) -> nn.Module:
        """The part named by `sub_config.name`, given the other fields and the `shared` values
        it declares (unbound: the detector adopts it)."""
        lines = self.problems(sub_config, field, shared)
        if lines:
            raise PartConfigError("; ".join(lines))
        factory = self._parts[sub_config["name"]]
        accepted = part_fields(factory)
        kwargs = {k: _plain(v) for k, v in sub_config.items() if k != "name"}
        kwargs.update({k: v for k, v in shared.items() if k in accepted})
        return factory(**kwargs)


def _plain(value: Any) -> Any:
    """Config containers -> hashable Python values (flax Module fields must hash)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value
