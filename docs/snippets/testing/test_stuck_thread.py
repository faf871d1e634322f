import threading

import trio
import trio.testing

from trio_background import BackgroundTasks, Supervisor


async def test_a_stuck_sync_task_is_abandoned(autojump_clock):
    unblock, started = threading.Event(), trio.Event()

    def stuck():
        trio.from_thread.run_sync(started.set)
        unblock.wait()  # never returns by itself

    supervisor = Supervisor(drain_timeout=5)
    batch = BackgroundTasks()
    batch.add_task(stuck)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, batch)
        await started.wait()
        supervisor.begin_shutdown()
        # While a thread runs, virtual time follows real time: jump, don't wait.
        autojump_clock.jump(5)
        report = await supervisor.shutdown()
        unblock.set()
    assert report.count("abandoned") == 1
