"""Pub/Sub delivery on the emulator: dead-letter policies really forward, and
push subscriptions deliver to a local HTTP server (2xx acks, other codes retry).
Both on the stack with backoffs capped at 1 s."""

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fakegcp_lib import unique, wait_for


def test_dead_letter_policy_forwards_after_max_attempts(fast_stack, topology):
    sub = "schedules-worker"
    spec = topology["subscriptions"][sub]
    assert spec["max_delivery_attempts"] == 5  # Pub/Sub's minimum: the quickest to exhaust
    dead_sub = f"{spec['dead_letter_topic']}-alert"
    assert topology["subscriptions"][dead_sub]["topic"] == spec["dead_letter_topic"]

    marker = unique("dl")
    fast_stack.publish(spec["topic"], b'{"kind":"tick"}', {"kind": "tick", "test": marker})

    # Pub/Sub forwards lazily: the emulator moves the message when the source
    # subscription is pulled again after the backoff, so keep pulling and nacking.
    attempts = []
    deadline = time.monotonic() + 60
    dead = None
    while dead is None and time.monotonic() < deadline:
        received = fast_stack.pull(sub)
        ours = [r for r in received if r["message"].get("attributes", {}).get("test") == marker]
        attempts += [r.get("deliveryAttempt") for r in ours]
        fast_stack.nack(sub, [r["ackId"] for r in ours])
        fast_stack.ack(sub, [r["ackId"] for r in received if r not in ours])
        for r in fast_stack.pull(dead_sub):
            if r["message"].get("attributes", {}).get("test") == marker:
                dead = r
            fast_stack.ack(dead_sub, [r["ackId"]])
        time.sleep(0.1)
    assert dead is not None, f"not dead-lettered after attempts {attempts}"
    assert attempts == [1, 2, 3, 4, 5]
    attrs = dead["message"]["attributes"]
    assert attrs["CloudPubSubDeadLetterSourceSubscription"] == sub
    assert attrs["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attrs["kind"] == "tick"
    assert base64.b64decode(dead["message"]["data"]) == b'{"kind":"tick"}'
    # and the source subscription does not deliver it again
    time.sleep(1.5)
    assert not [r for r in fast_stack.pull(sub)
                if r["message"].get("attributes", {}).get("test") == marker]


class Endpoint:
    """A push endpoint on 127.0.0.1 that records what it receives: answers a
    message whose `test` attribute is in `script` with the next status listed
    there, any other with 204."""

    def __init__(self):
        self.script: dict[str, list[int]] = {}
        self.received = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                marker = body["message"].get("attributes", {}).get("test")
                with endpoint.lock:
                    statuses = endpoint.script.get(marker) or [204]
                    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                    endpoint.received.append((self.path, body, status, time.monotonic()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def deliveries(self, marker):
        with self.lock:
            return [r for r in self.received
                    if r[1]["message"].get("attributes", {}).get("test") == marker]


@pytest.fixture
def sftp_push(fast_stack):
    """deliveries-sftp pushing to a local endpoint; back to pull afterwards."""
    with Endpoint() as endpoint:
        done = fast_stack.stack("apply", "--retry-backoff-cap", "1",
                                "--push-endpoint", f"sftp={endpoint.url}")
        assert done.returncode == 0, done.stderr
        try:
            yield endpoint
        finally:
            done = fast_stack.stack("apply", "--retry-backoff-cap", "1")
            assert done.returncode == 0, done.stderr


def test_push_delivers_retries_non_2xx_and_stops_after_2xx(fast_stack, sftp_push, topology):
    spec = topology["subscriptions"]["deliveries-sftp"]
    marker = unique("push")
    sftp_push.script[marker] = [500, 503, 204]
    message_id = fast_stack.publish("deliveries", b'{"delivery_id":"d1"}',
                                    {"sink_sftp": "true", "test": marker})
    got = wait_for(lambda: len(sftp_push.deliveries(marker)) >= 3 and sftp_push.deliveries(marker),
                   timeout=30, what="three push deliveries")
    assert [status for _, _, status, _ in got[:3]] == [500, 503, 204]
    path, body, _, _ = got[0]
    assert path == spec["push_path"]
    assert body["subscription"] == f"projects/{fast_stack.project}/subscriptions/deliveries-sftp"
    message = body["message"]
    assert message["messageId"] == message_id
    assert message.get("message_id", message_id) == message_id
    assert message["attributes"] == {"sink_sftp": "true", "test": marker}
    assert base64.b64decode(message["data"]) == b'{"delivery_id":"d1"}'
    # redeliveries are the same message
    assert {b["message"]["messageId"] for _, b, _, _ in got} == {message_id}
    # after the 2xx, no more deliveries (well past the 1 s backoff)
    time.sleep(3)
    assert len(sftp_push.deliveries(marker)) == 3


def test_push_and_pull_subscriptions_coexist(fast_stack, sftp_push):
    """Only the sftp role pushes; the api subscription still pulls. The
    emulator ignores filters, so the api-only message reaches the sftp
    endpoint too (see test_quirk_the_emulator_ignores_filters)."""
    marker = unique("api-only")
    fast_stack.publish("deliveries", b"{}", {"sink_api": "true", "test": marker})
    fast_stack.pull_until("deliveries-api", lambda m: m.get("attributes", {}).get("test") == marker)
    got = wait_for(lambda: sftp_push.deliveries(marker), timeout=10, what="the push delivery")
    assert got[0][1]["message"]["attributes"] == {"sink_api": "true", "test": marker}
