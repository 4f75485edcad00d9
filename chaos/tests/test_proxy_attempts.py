"""faultproxy.attempts: ReceiveRequestAttemptId as SQS honours it on a FIFO queue, against a small in-memory
queue standing in for the emulator (which ignores the attempt id: every receive it gets is a new one)."""

import asyncio
import itertools
import json

from faultproxy.attempts import WINDOW, Attempts
from faultproxy.http1 import Message

QUEUE = "http://127.0.0.1:4566/000000000000/q.fifo"


def request(operation: str, **params) -> Message:
    body = json.dumps(params).encode()
    head = (
        f"POST / HTTP/1.1\r\nhost: sqs\r\nx-amz-target: AmazonSQS.{operation}\r\n"
        f"content-type: application/x-amz-json-1.0\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    m = Message(head)
    m.raw_body = m.body = body
    return m


def receive(attempt_id: str | None = "a1", wait: int = 0, queue: str = QUEUE) -> Message:
    params = {"QueueUrl": queue, "MaxNumberOfMessages": 10, "WaitTimeSeconds": wait}
    if attempt_id:
        params["ReceiveRequestAttemptId"] = attempt_id
    return request("ReceiveMessage", **params)


def answer(payload: dict) -> Message:
    body = json.dumps(payload).encode()
    m = Message(f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n".encode())
    m.status = 200
    m.raw_body = m.body = body
    return m


class Emulator:
    """Visible messages handed out by every receive with a fresh receipt handle; it never waits (the proxy
    turns long polls into immediate receives) and ignores the attempt id, as ministack does."""

    def __init__(self, *ids: str):
        self.visible = list(ids)
        self.handles = itertools.count(1)
        self.receives: list[dict] = []

    async def forward(self, req: Message) -> Message:
        params = json.loads(req.body)
        self.receives.append(params)
        taken, self.visible = self.visible[:10], self.visible[10:]
        msgs = [{"MessageId": m, "ReceiptHandle": f"{m}#{next(self.handles)}", "Body": m} for m in taken]
        await asyncio.sleep(0)
        return answer({"Messages": msgs} if msgs else {})


def ids_and_handles(resp: Message) -> list[tuple[str, str]]:
    return [(m["MessageId"], m["ReceiptHandle"]) for m in json.loads(resp.body).get("Messages", [])]


async def never() -> None:
    await asyncio.Event().wait()


def run(coro):
    return asyncio.run(coro)


def test_a_repeated_attempt_id_gets_the_same_messages_and_receipt_handles():
    async def go():
        emu, a = Emulator("m1", "m2"), Attempts()
        first = await a.receive(receive("a1"), emu.forward, never)
        emu.visible.append("m3")
        again = await a.receive(receive("a1"), emu.forward, never)
        assert ids_and_handles(again) == ids_and_handles(first) == [("m1", "m1#1"), ("m2", "m2#2")]
        assert len(emu.receives) == 1, "the repeat reached the emulator"
        other = await a.receive(receive("a2"), emu.forward, never)
        assert [i for i, _ in ids_and_handles(other)] == ["m3"]
        assert a.view()["repeats_answered"] == 1

    run(go())


def test_a_repeat_after_a_delete_or_visibility_change_of_its_messages_is_a_new_receive():
    for operation, params in [
        ("DeleteMessage", {"ReceiptHandle": "m1#1"}),
        ("ChangeMessageVisibilityBatch", {"Entries": [{"Id": "0", "ReceiptHandle": "m1#1", "VisibilityTimeout": 0}]}),
    ]:

        async def go(operation=operation, params=params):
            emu, a = Emulator("m1"), Attempts()
            await a.receive(receive("a1"), emu.forward, never)
            a.saw(operation, request(operation, QueueUrl=QUEUE, **params))
            emu.visible.append("m1")  # released: visible again
            again = await a.receive(receive("a1"), emu.forward, never)
            assert ids_and_handles(again) == [("m1", "m1#2")], operation
            assert len(emu.receives) == 2

        run(go())


def test_an_attempt_id_is_remembered_for_five_minutes_per_queue():
    async def go():
        now = [1000.0]
        emu, a = Emulator("m1", "m2"), Attempts(clock=lambda: now[0])
        await a.receive(receive("a1"), emu.forward, never)
        # The same id on another queue is another attempt.
        await a.receive(receive("a1", queue=QUEUE + "x"), emu.forward, never)
        assert len(emu.receives) == 2
        now[0] += WINDOW - 1
        await a.receive(receive("a1"), emu.forward, never)
        assert len(emu.receives) == 2
        now[0] += 2
        await a.receive(receive("a1"), emu.forward, never)
        assert len(emu.receives) == 3, "remembered past the window"

    run(go())


def test_without_an_attempt_id_or_the_json_protocol_the_request_goes_through_unchanged():
    async def go():
        emu, a = Emulator("m1", "m2"), Attempts()
        req = receive(None, wait=5)
        seen = []

        async def forward(r):
            seen.append(r)
            return await emu.forward(r) if r.body else answer({})

        await a.receive(req, forward, never)
        assert seen == [req], "changed or repeated"
        form = Message(
            b"POST / HTTP/1.1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 0\r\n\r\n"
        )
        await a.receive(form, forward, never)
        assert seen[-1] is form

    run(go())


def test_a_long_poll_is_immediate_receives_that_stop_when_the_caller_hangs_up():
    async def go():
        emu, a = Emulator(), Attempts()
        hung_up = asyncio.Event()
        poll = asyncio.ensure_future(a.receive(receive("a1", wait=20), emu.forward, hung_up.wait))
        await asyncio.sleep(0.35)
        assert not poll.done()
        assert emu.receives and all(r["WaitTimeSeconds"] == 0 for r in emu.receives), emu.receives
        hung_up.set()
        resp = await asyncio.wait_for(poll, 1)
        assert ids_and_handles(resp) == []
        n = len(emu.receives)
        emu.visible.append("m1")  # e.g. a message released right after the caller gave up
        await asyncio.sleep(0.3)
        assert len(emu.receives) == n, "a poll whose caller is gone went on taking messages"
        assert emu.visible == ["m1"]

    run(go())


def test_messages_that_arrive_during_a_long_poll_are_answered_at_once():
    async def go():
        emu, a = Emulator(), Attempts()
        poll = asyncio.ensure_future(a.receive(receive("a1", wait=20), emu.forward, never))
        await asyncio.sleep(0.15)
        emu.visible.append("m1")
        resp = await asyncio.wait_for(poll, 1)
        assert [i for i, _ in ids_and_handles(resp)] == ["m1"]

    run(go())


def test_a_repeat_while_the_first_poll_is_out_ends_it_and_both_get_the_one_answer():
    async def go():
        emu, a = Emulator(), Attempts()
        # The caller ended its poll without the proxy noticing (the connection is still open), then repeats.
        first = asyncio.ensure_future(a.receive(receive("a1", wait=20), emu.forward, never))
        await asyncio.sleep(0.15)
        again = await asyncio.wait_for(a.receive(receive("a1"), emu.forward, never), 1)
        assert ids_and_handles(again) == []
        assert ids_and_handles(await asyncio.wait_for(first, 1)) == []
        n = len(emu.receives)
        emu.visible.append("m1")
        await asyncio.sleep(0.3)
        assert len(emu.receives) == n and emu.visible == ["m1"], "the ended poll went on"
        assert a.view()["polls_ended"] == 1

    run(go())


def test_a_failed_receive_is_not_remembered():
    async def go():
        emu, a = Emulator("m1"), Attempts()

        async def refuse(_r):
            m = Message(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
            m.status = 500
            return m

        assert (await a.receive(receive("a1"), refuse, never)).status == 500
        assert await a.receive(receive("a1"), lambda r: asyncio.sleep(0, None), never) is None
        resp = await a.receive(receive("a1"), emu.forward, never)
        assert [i for i, _ in ids_and_handles(resp)] == ["m1"]

    run(go())


def test_a_layer_that_honours_the_attempt_id_does_not_pass_it_on():
    """Two proxies in a row (a test's fault proxy in front of the region's gate): the outer one answers repeats,
    so the inner one must see plain receives, or it would remember a long poll's first empty check and answer
    every later check of that poll with it."""

    async def go():
        emu, outer, inner = Emulator(), Attempts(), Attempts()
        chain = lambda r: inner.receive(r, emu.forward, never)  # noqa: E731
        poll = asyncio.ensure_future(outer.receive(receive("a1", wait=5), chain, never))
        await asyncio.sleep(0.25)  # a few empty checks
        emu.visible.append("m1")
        got = await asyncio.wait_for(poll, 3)
        return got, emu.receives

    got, receives = run(go())
    assert ids_and_handles(got) == [("m1", "m1#1")]
    assert all("ReceiveRequestAttemptId" not in r for r in receives)
