import pytest
from signup_app import app, outbox


@pytest.fixture
def asgi_app():
    outbox.clear()
    return app


async def test_response_comes_before_the_email(background_client, autojump_clock):
    response = await background_client.post("/signup/ada@example.com")
    assert response.json() == {"status": "welcome"}
    assert outbox == []  # the email is still being sent


async def test_drain_lets_the_email_finish(background_client, autojump_clock):
    await background_client.post("/signup/ada@example.com")
    report = await background_client.shutdown(mode="drain", drain_timeout=30)
    assert report.all_completed
    assert outbox == ["ada@example.com"]


async def test_sigterm_mid_email_with_a_short_drain(background_client, autojump_clock):
    await background_client.post("/signup/ada@example.com")
    report = await background_client.shutdown(mode="drain", drain_timeout=1)
    assert report.count("cancelled") == 1
    assert report.cancelled[0].name == "send_welcome_email"
    assert report.cancelled[0].ended_at == 1.0
    assert outbox == []
