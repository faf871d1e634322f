import httpx
import pytest
from signup_app import app


@pytest.fixture
def asgi_app():
    return app


async def test_real_hypercorn_cancel_mode(live_server):
    async with httpx.AsyncClient(base_url=live_server.url) as client:
        response = await client.post("/signup/ada@example.com")
    assert response.status_code == 200
    report = await live_server.shutdown(mode="cancel")
    # Cut at once: cancelled if the email had started, else skipped.
    assert report.count("cancelled") + report.count("skipped") == 1
