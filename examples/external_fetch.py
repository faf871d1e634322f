"""Async background tasks: fetch external data, then call a webhook, after the response.

The seed's async example on trio. Both tasks are ``async def``: the library
awaits them in the request's own task after the response, one after the
other, with no thread. The seed's HTTP client, aiohttp, runs only on
asyncio; ``httpx.AsyncClient`` runs on trio (through AnyIO), and the seed's
``asyncio.sleep`` is ``trio.sleep``.

What real use needs, and the seed lacks: both URLs must be ``http(s)`` URLs
(anything else is refused with 422); the client has a timeout; a data source
that cannot be reached, answers an error status, or answers something that
is not JSON, is logged with the URL and the reason, and the task ends (as in
the seed, it does not stop the webhook); any 2xx from the webhook is a
success, not just 200. Anything unexpected propagates: the library logs it
with its traceback and records the task as ``failed``. (The URLs come from
the client: a real service would also check them against an allow-list, so
that it cannot be made to call its own internal services.)

Run it::

    python -m trio_background examples.external_fetch:app

and from another shell (any JSON URL, and any URL that accepts a POST)::

    curl -X POST 'localhost:8000/trigger-external-fetch/7?data_url=https://example.org/data.json&webhook_url=https://example.org/hook'
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import trio
from fastapi import FastAPI
from pydantic import AnyHttpUrl

from trio_background import BackgroundTasksMiddleware
from trio_background.fastapi import BackgroundTasks

logger = logging.getLogger(__name__)

Json = dict[str, Any] | list[Any] | str | int | float | bool | None
"""What ``response.json()`` gives."""

PROCESS_SECONDS = 1.0
"""How long processing the fetched data takes (the seed's ``asyncio.sleep(1)``)."""
TIMEOUT = httpx.Timeout(10.0)
"""The HTTP client's timeout, for connecting and for each read and write."""

app = FastAPI(title="External fetch and webhook in the background")
app.add_middleware(BackgroundTasksMiddleware)


def _reason(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def fetch_external_data(url: str, user_id: int) -> None:
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(url)
    except httpx.HTTPError as e:
        logger.warning("Failed to fetch external data from %s: %s", url, _reason(e))
        return
    if not response.is_success:
        logger.warning(
            "Failed to fetch external data from %s: it answered HTTP %d", url, response.status_code
        )
        return
    try:
        data: Json = response.json()
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        content_type = response.headers.get("content-type", "none")
        logger.warning(
            "Failed to fetch external data from %s: the answer is not JSON (content-type %s): %s",
            url,
            content_type,
            _reason(e),
        )
        return

    # Process the fetched data
    await process_external_data(data, user_id)

    logger.info("Successfully processed external data for user %d", user_id)


async def process_external_data(data: Json, user_id: int) -> None:
    # Simulate async processing
    await trio.sleep(PROCESS_SECONDS)
    items = len(data) if isinstance(data, list | dict) else 1
    logger.info("Processed data for user %d: %d items", user_id, items)


async def send_webhook(webhook_url: str, payload: dict[str, Any]) -> None:
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.post(webhook_url, json=payload)
    except httpx.HTTPError as e:
        logger.warning("Webhook error for %s: %s", webhook_url, _reason(e))
        return
    if response.is_success:
        logger.info("Webhook sent successfully")
    else:
        logger.warning("Webhook failed with status %d", response.status_code)


@app.post("/trigger-external-fetch/{user_id}")
async def trigger_external_fetch(
    user_id: int, data_url: AnyHttpUrl, webhook_url: AnyHttpUrl, background_tasks: BackgroundTasks
) -> dict[str, str]:
    # Fetch external data in background
    background_tasks.add_task(fetch_external_data, str(data_url), user_id)

    # Send webhook notification in background
    payload = {"user_id": user_id, "action": "external_fetch_triggered"}
    background_tasks.add_task(send_webhook, str(webhook_url), payload)

    return {"message": f"External data fetch triggered for user {user_id}"}
