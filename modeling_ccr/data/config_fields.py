"""Reading one section of a run configuration (a YAML mapping) into a typed class, with one-line errors.

Each section is a class whose fields hold the defaults and the types (`DataConfig` here in data/, the
training and evaluation sections in training/run_config.py, the model options in the backbone config
classes). This module only reads: it checks the keys, turns each value into the scalar type its field
names (an int for a float, `"1e-3"` for a float, an integral float for an int) and checks `choices` in a
field's metadata; an error names the file, the field, what was expected and what was found.

It lives in data/ because `ccr evaluate` reads the data section of a finished run (data/corpora.py)
below training/.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..errors import ConfigError

# Scalar types an annotation may name; a field whose annotation names anything else is not checked here.
_SCALAR_TYPES = {"float", "int", "bool", "str", "None", "NoneType"}


class FieldValueError(ConfigError):
    """A field's value outside its range or choices, found by the section class itself (in its
    `__post_init__`), which does not know the file: the reader prefixes it."""


def _annotation_names(annotation: Any) -> set[str]:
    """`"float | None"`, `float | None` or `Optional[float]` -> {"float", "None"}."""
    if isinstance(annotation, str):
        return {part.strip() for part in annotation.split("|")}
    args = getattr(annotation, "__args__", None)
    if args:
        return set().union(*(_annotation_names(a) for a in args))
    return {getattr(annotation, "__name__", str(annotation))}


def typed_value(value: Any, annotation: Any, key: str, where: str) -> Any:
    """`value` as the scalar type the annotation names, or ConfigError naming the key, the expected type
    and what was found. Values of non-scalar annotations (enums, lists, mappings) pass unchanged."""
    names = _annotation_names(annotation)
    if not names <= _SCALAR_TYPES or (value is None and names & {"None", "NoneType"}):
        return value
    if "str" in names and isinstance(value, str):
        return value
    if "bool" in names and isinstance(value, bool):
        return value
    if "int" in names and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer() and "float" not in names:
            return int(value)
    if "float" in names and not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)) and math.isfinite(number):
            return float(number)
    expected = " or ".join(sorted(n.replace("NoneType", "None").replace("None", "null") for n in names))
    raise ConfigError(f"{where}: {key} must be {expected}, found {value!r} ({type(value).__name__})")


def check_keys(
    section: str, values: Mapping[str, Any], allowed: Sequence[str] | set[str], where: str
) -> None:
    """ConfigError naming the unknown keys of a section and the allowed ones."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} in section {section!r}; allowed: {sorted(allowed)}"
        )


def typed_section(
    section: str, values: Mapping[str, Any], annotations: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """The section's values, each typed by its annotation (keys without one pass unchanged)."""
    return {
        key: typed_value(value, annotations[key], f"{section}.{key}", where) if key in annotations else value
        for key, value in values.items()
    }


def field_types(cls: type) -> dict[str, Any]:
    """{field name: annotation} of a dataclass."""
    return {f.name: f.type for f in dataclasses.fields(cls)}


def one_of(choices: Sequence[Any]) -> str:
    """("warn", "stop", "off") -> "warn, stop or off"."""
    names = [str(choice) for choice in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_choices(instance: Any, section: str, names: Collection[str] | None = None) -> None:
    """FieldValueError for a field (of `names`, default all) whose value is not among the `choices` of
    its metadata."""
    for field in dataclasses.fields(instance):
        if names is not None and field.name not in names:
            continue
        choices = field.metadata.get("choices")
        value = getattr(instance, field.name)
        if choices is not None and value not in choices:
            raise FieldValueError(f"{section}.{field.name} must be {one_of(choices)}, found {value!r}")


def read_section(cls: type, section: str, values: Any, where: str, **fixed: Any) -> Any:
    """A dataclass section read from its YAML mapping: keys checked, values typed, `cls(**values)`.

    `fixed` are constructor arguments that do not come from the section (not checked as its keys).
    A FieldValueError of the class's own checks is given the file; other ValueErrors and TypeErrors
    of the constructor become "invalid <section> section: ...".
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: {section!r} must be a mapping, found {values!r}")
    types = field_types(cls)
    check_keys(section, values, set(types) - set(fixed), where)
    typed = typed_section(section, values, types, where)
    try:
        return cls(**fixed, **typed)
    except FieldValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: invalid {section} section: {err}") from err
