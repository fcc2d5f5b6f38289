"""The agent's queue of reports: kept in order until written; once closed (the agent
leaves), what is queued is still handed out, then the end, and nothing new is taken."""

from __future__ import annotations

from strata.agent.attempts import Outgoing
from strata.api.provisioner.v1 import provisioner_pb2 as pb


def _heartbeat(node_id: str) -> pb.ConnectRequest:
    return pb.ConnectRequest(heartbeat=pb.Heartbeat(node_id=node_id))


async def test_a_closed_queue_hands_out_what_it_holds_then_the_end() -> None:
    outgoing = Outgoing()
    outgoing.put(_heartbeat("a"))
    outgoing.put(_heartbeat("b"))

    outgoing.close()
    outgoing.put(_heartbeat("late"))  # a heartbeat after the agent began to leave

    written = []
    while (message := await outgoing.next()) is not None:
        written.append(message.heartbeat.node_id)
        outgoing.sent()
    assert written == ["a", "b"]


async def test_a_message_stays_first_until_it_is_written() -> None:
    outgoing = Outgoing()
    outgoing.put(_heartbeat("a"))
    outgoing.put(_heartbeat("b"))

    first = await outgoing.next()
    again = await outgoing.next()  # the write failed: the session hands it out again
    outgoing.sent()
    second = await outgoing.next()

    names = [m.heartbeat.node_id if m is not None else None for m in (first, again, second)]
    assert names == ["a", "a", "b"]
