"""The control plane's parts: typed attributes that exist from :meth:`ControlPlane.start` on.

Reading one before start-up made it raises :class:`NotStartedError` naming it (an
``AttributeError``, so ``getattr(plane, "scheduler", None)`` still answers None), instead of a
failure deep inside a collaborator.
"""
from __future__ import annotations

from typing import Generic, TypeVar, cast, overload

T = TypeVar("T")


class NotStartedError(AttributeError):
    """A component of the control plane was used before :meth:`ControlPlane.start` made it."""


class Part(Generic[T]):
    """A component the control plane has from :meth:`ControlPlane.start` on (typed; reading it
    before says so, instead of failing deep inside a collaborator)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Part[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> T | Part[T]:
        if obj is None:
            return self
        try:
            return cast(T, obj.__dict__[self.name])
        except KeyError:
            raise NotStartedError(f"the control plane has no {self.name} before it started") from None

    def __set__(self, obj: object, value: T) -> None:
        obj.__dict__[self.name] = value
