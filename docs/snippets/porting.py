import trio

from trio_background import BackgroundTasks

log: list[str] = []


async def send_email(to: str) -> None:
    await trio.sleep(1)
    log.append(f"mail to {to}")


def charge(amount: int) -> None:
    raise ValueError(f"cannot charge {amount}")


async def main() -> None:
    tasks = BackgroundTasks()

    # add_task checks its input at once, where the mistake is.
    try:
        tasks.add_task(send_email("ada@example.com"))
    except TypeError as exc:
        log.append(f"TypeError: {exc}")

    # add_task returns the task, to look at later.
    first = tasks.add_task(send_email, "ada@example.com")
    failing = tasks.add_task(charge, 10)
    last = tasks.add_task(send_email, "grace@example.com")

    # await tasks() is Starlette's protocol: run now, in order, and stop at
    # the first exception, which propagates; the tasks after it are skipped.
    try:
        await tasks()
    except ValueError as exc:
        log.append(f"ValueError: {exc}")
    log.append(f"states: {first.state}, {failing.state}, {last.state}")


if __name__ == "__main__":
    trio.run(main)
    print(*log, sep="\n")
