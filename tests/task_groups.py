"""For tests of the objects that own a task group: the tasks still running, and a start that fails
half-way (a task already started in the object's group, then an error) — the one fault injected
here: what fails is a test double of the group's ``start_soon``/``start``; the objects are real."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio


class StartFailed(Exception):
    """What ``first_start_fails`` raises."""


def live_tasks() -> set[asyncio.Task[Any]]:
    """The tasks of the running loop that have not finished."""
    return {t for t in asyncio.all_tasks() if not t.done()}


@contextmanager
def first_start_fails() -> Iterator[StartFailed]:
    """While in the block, the next task group created (``anyio.create_task_group``) starts the first
    task it is given (``start_soon`` or ``start``), then raises the yielded ``StartFailed``; the
    groups after it are untouched."""
    error = StartFailed("the start failed half-way")
    real = anyio.create_task_group

    def create() -> Any:
        anyio.create_task_group = real  # type: ignore[assignment]  # only the first group
        tg = real()
        start_soon, start = tg.start_soon, tg.start

        def failing_start_soon(*args: Any, **kwargs: Any) -> None:
            start_soon(*args, **kwargs)
            raise error

        async def failing_start(*args: Any, **kwargs: Any) -> Any:
            await start(*args, **kwargs)
            raise error

        tg.start_soon, tg.start = failing_start_soon, failing_start  # type: ignore[method-assign]
        return tg

    anyio.create_task_group = create  # type: ignore[assignment]
    try:
        yield error
    finally:
        anyio.create_task_group = real  # type: ignore[assignment]
