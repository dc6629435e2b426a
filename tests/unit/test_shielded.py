"""`shielded`: an awaitable run to its end through a cancellation, which is then delivered after it."""

from __future__ import annotations

import asyncio

import pytest

from controller.launchers.aio import shielded

pytestmark = pytest.mark.unit


def test_result_is_kept_when_the_cancel_lands_as_it_completes() -> None:
    """The race that leaked a worker: the spawn finishes in the very step the caller is cancelled."""

    async def scenario() -> list[int]:
        inner: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        got: list[int] = []

        async def caller() -> None:
            got.append(await shielded(inner))
            await asyncio.Event().wait()  # the cancellation must arrive here

        task = asyncio.create_task(caller())
        await asyncio.sleep(0)  # sleep-ok: one bare yield so `caller` reaches its await
        inner.set_result(42)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    assert asyncio.run(scenario()) == [42]


def test_a_cancel_during_the_wait_is_delivered_after_it() -> None:
    async def scenario() -> tuple[list[str], bool]:
        release = asyncio.Event()
        steps: list[str] = []

        async def work() -> str:
            await release.wait()
            steps.append("work done")
            return "spawned"

        async def caller() -> None:
            steps.append(await shielded(work()))
            await asyncio.Event().wait()

        task = asyncio.create_task(caller())
        await asyncio.sleep(0)  # sleep-ok: one bare yield so `caller` reaches its await
        task.cancel()
        await asyncio.sleep(0)  # sleep-ok: let the cancellation reach `shielded`
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return steps, task.cancelled()

    assert asyncio.run(scenario()) == (["work done", "spawned"], True)


def test_errors_of_the_awaitable_propagate() -> None:
    async def failing() -> None:
        raise ValueError("spawn failed")

    async def scenario() -> None:
        await shielded(failing())

    with pytest.raises(ValueError, match="spawn failed"):
        asyncio.run(scenario())
