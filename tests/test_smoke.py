from tests.conftest import Daemon, Peers


async def test_customer_message_reaches_bot(daemon: Daemon, peers: Peers) -> None:
    status, body = await daemon.customer("hello", "m1")
    assert (status, body) == (202, {"accepted": True})
    [got] = await peers.bot.wait_for(1)
    assert got["Message"] == "hello"
