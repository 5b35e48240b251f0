"""Helpers shared across the tiers (no I/O, no asyncio): importable from ``protocol`` and above."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeAlias, TypeVar

T = TypeVar("T")

MaybeAwaitable: TypeAlias = T | Awaitable[T]
"""A result that is either the value itself or an awaitable of it (a hook or layer that may be
``async`` or not)."""


async def maybe_await(value: MaybeAwaitable[T]) -> T:
    """``value`` itself, or what it resolves to when it is awaitable (a coroutine, a future)."""
    if isinstance(value, Awaitable):
        return await value
    return value
