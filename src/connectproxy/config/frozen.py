"""Frozen value classes without the dataclasses module: what the config model is made of.

Why not dataclasses: `connectproxy explain` must answer in under 100 ms on a config of 10,000
domain patterns, start-up included, and the dataclasses module compiles generated source for
each method of each class at import, and imports inspect: for the model's 16 classes, a tenth of
explain's time. A `Frozen` subclass writes its own `__init__` (so mypy checks every call as it
checked the dataclass's) and lists its fields; `Frozen` gives what the frozen dataclasses gave:
equality and hash over the fields, a repr, refusal of assignment, and `replace`.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

__all__ = ["Frozen", "FrozenInstanceError", "replace"]


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen value (as dataclasses' error of the same name)."""


class Frozen:
    """Base of the model's immutable values. Instances keep a `__dict__`: the model caches
    some derived values with functools.cached_property."""

    __slots__ = ()

    # The `__init__` arguments, in order: compared, hashed, shown and copied by `replace`.
    _fields: ClassVar[tuple[str, ...]] = ()
    # Fields left out of the repr (secrets) and out of the hash (values that cannot be hashed).
    _unshown: ClassVar[frozenset[str]] = frozenset()
    _unhashed: ClassVar[frozenset[str]] = frozenset()

    def _set(self, **values: object) -> None:
        """Set fields, from `__init__` only: afterwards assignment is refused."""
        self.__dict__.update(values)

    def _values(self) -> tuple[object, ...]:
        return tuple([getattr(self, name) for name in self._fields])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Frozen)
        return self._values() == other._values()

    def __hash__(self) -> int:
        unhashed = self._unhashed
        return hash(tuple([getattr(self, n) for n in self._fields if n not in unhashed]))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self._fields if name not in self._unshown
        )
        return f"{self.__class__.__qualname__}({shown})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


# Bound to the class itself, not to the string "Frozen": typing compiles a string bound, and the
# process's first compile() sets up the compiler's AST types, 2% of explain's instructions.
_F = TypeVar("_F", bound=Frozen)


def replace(value: _F, /, **changes: Any) -> _F:
    """A copy of `value` with some fields changed, made by its `__init__` (as
    dataclasses.replace makes it), so every derived value is made again."""
    fields = {name: getattr(value, name) for name in value._fields}
    unknown = changes.keys() - fields.keys()
    if unknown:
        raise TypeError(f"{value.__class__.__qualname__} has no field {sorted(unknown)[0]!r}")
    return value.__class__(**{**fields, **changes})
