"""ASGI types and the keys this library puts in ASGI scopes, in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["EXCHANGE_KEY", "MIDDLEWARE_KEY", "ASGIApp", "Message", "Receive", "Scope", "Send"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The exchange key marks an HTTP request whose batch a middleware owns; the
# middleware key marks a lifespan scope that a middleware already watches.
EXCHANGE_KEY = "trio_background.exchange"
MIDDLEWARE_KEY = "trio_background.middleware"
