"""The app's own tests, switched to trio: one argument and one fixture."""

import httpx
import pytest
from fastapi.testclient import TestClient
from recipes_app import app, outbox


def test_creating_a_recipe_notifies_followers() -> None:
    outbox.clear()
    with TestClient(app, backend="trio") as client:  # was TestClient(app)
        response = client.post("/recipes", json={"name": "soup", "author": "ada"})
        assert response.status_code == 201
        # The client waits for the app call, tasks included: the effect is there.
        assert outbox == ["ada posted soup"]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # was "asyncio" (AnyIO's default)


@pytest.mark.anyio
async def test_with_an_async_client() -> None:
    outbox.clear()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/recipes", json={"name": "bread", "author": "bo"})
    assert response.status_code == 201
    assert outbox == ["bo posted bread"]
