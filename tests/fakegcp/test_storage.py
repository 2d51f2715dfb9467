"""Cloud Storage on fake-gcs-server: the raw bucket's notifications, and the
preconditions that claims rely on (and those the fake ignores)."""

import base64
import json
import time
import urllib.request

from fakegcp_lib import request, unique


def _is_object(name):
    return lambda m: m.get("attributes", {}).get("objectId") == name


def test_upload_to_raw_publishes_object_finalize(stack, config):
    raw = config["gcp"]["buckets"]["raw"]
    name = f"extracts/transactions/dt=2026-11-27/{unique('part')}.csv"
    status, obj = stack.upload_multipart(raw, name, b"transaction_id\nTX-1\n")
    assert status == 200, obj

    got = stack.pull_until("extracts-worker", _is_object(name))
    attrs = got["message"]["attributes"]
    assert attrs["eventType"] == "OBJECT_FINALIZE"
    assert attrs["payloadFormat"] == "JSON_API_V1"
    assert attrs["bucketId"] == raw
    assert attrs["objectId"] == name
    assert attrs["objectGeneration"] == obj["generation"]
    assert attrs["eventTime"]
    # quirk: real GCS also sends notificationConfig; fake-gcs-server does not
    # (if this fails the fake was fixed: update fake-gcp/README.md)
    assert "notificationConfig" not in attrs
    data = json.loads(base64.b64decode(got["message"]["data"]))
    assert data["kind"] == "storage#object"
    assert (data["bucket"], data["name"], data["generation"]) == (raw, name, obj["generation"])
    assert data["size"] == str(len(b"transaction_id\nTX-1\n"))
    for key in ("md5Hash", "crc32c", "contentType", "timeCreated"):
        assert data[key], key

    # a new generation of the same object notifies again, with that generation
    status, obj2 = stack.upload_multipart(raw, name, b"transaction_id\nTX-2\n")
    assert status == 200 and obj2["generation"] != obj["generation"]
    got = stack.pull_until("extracts-worker", _is_object(name))
    assert got["message"]["attributes"]["objectGeneration"] == obj2["generation"]


def test_writes_to_other_buckets_do_not_notify(stack, config):
    buckets = config["gcp"]["buckets"]
    quiet = unique("claims/quiet")
    for logical in ("curated", "products", "ops"):
        status, reply = stack.upload_multipart(buckets[logical], quiet, b"x")
        assert status == 200, reply
    # a sentinel in the raw bucket, written after them; then a little longer,
    # since fake-gcs-server publishes asynchronously
    sentinel = unique("extracts/sentinel")
    assert stack.upload_multipart(buckets["raw"], sentinel, b"x")[0] == 200
    seen = []

    def is_sentinel(message):
        seen.append(message["attributes"]["objectId"])
        return message["attributes"]["objectId"] == sentinel

    stack.pull_until("extracts-worker", is_sentinel)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        received = stack.pull("extracts-worker")
        seen += [r["message"]["attributes"]["objectId"] for r in received]
        stack.ack("extracts-worker", [r["ackId"] for r in received])
        time.sleep(0.1)
    assert quiet not in seen


def test_generation_is_the_one_of_the_upload_response(stack, config):
    ops = config["gcp"]["buckets"]["ops"]
    name = unique("claims/gen")
    status, obj = stack.upload_multipart(ops, name, b"a")
    assert status == 200
    assert isinstance(obj["generation"], str) and obj["generation"].isdigit()
    status, meta = stack.object_meta(ops, name)
    assert status == 200 and meta["generation"] == obj["generation"]


def test_claim_with_if_generation_match_zero_has_one_winner(stack, config):
    """Multipart uploads (what the official clients send for small objects)
    honour ifGenerationMatch: claims are safe on this fake."""
    ops = config["gcp"]["buckets"]["ops"]
    claim = unique("claims/batch") + ".json"
    status, first = stack.upload_multipart(ops, claim, b"worker-a", ifGenerationMatch=0)
    assert status == 200, first
    status, reply = stack.upload_multipart(ops, claim, b"worker-b", ifGenerationMatch=0)
    assert status == 412, reply
    assert stack.object_data(ops, claim) == b"worker-a"


def test_takeover_is_conditional_on_the_current_generation(stack, config):
    ops = config["gcp"]["buckets"]["ops"]
    claim = unique("claims/lease") + ".json"
    status, first = stack.upload_multipart(ops, claim, b"lease-1", ifGenerationMatch=0)
    assert status == 200
    status, second = stack.upload_multipart(ops, claim, b"lease-2",
                                            ifGenerationMatch=first["generation"])
    assert status == 200, second
    assert second["generation"] != first["generation"]
    # a worker still holding the first generation loses
    status, reply = stack.upload_multipart(ops, claim, b"lease-stale",
                                           ifGenerationMatch=first["generation"])
    assert status == 412, reply
    assert stack.object_data(ops, claim) == b"lease-2"


def test_quirk_media_uploads_ignore_preconditions(stack, config):
    """Documents a limit of fake-gcs-server: uploadType=media ignores
    ifGenerationMatch (real GCS answers 412). The worker must write claims
    with multipart uploads. If this test fails, the fake was fixed: update
    fake-gcp/README.md."""
    ops = config["gcp"]["buckets"]["ops"]
    claim = unique("claims/media")
    assert stack.upload_multipart(ops, claim, b"first", ifGenerationMatch=0)[0] == 200
    status, _ = stack.upload_media(ops, claim, b"second", ifGenerationMatch=0)
    assert status == 200
    assert stack.object_data(ops, claim) == b"second"


def test_quirk_resumable_uploads_ignore_preconditions(stack, config):
    """Same limit for resumable uploads (the official clients' choice for large
    objects): never use them for claims against this fake."""
    ops = config["gcp"]["buckets"]["ops"]
    claim = unique("claims/resumable")
    assert stack.upload_multipart(ops, claim, b"first", ifGenerationMatch=0)[0] == 200
    req = urllib.request.Request(
        f"{stack.gcs}/upload/storage/v1/b/{ops}/o?uploadType=resumable&name={claim}&ifGenerationMatch=0",
        data=b"{}", method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        location = resp.headers["Location"]
    status, _ = request("PUT", location, raw=b"second", content_type="text/plain")
    assert status == 200
    assert stack.object_data(ops, claim) == b"second"


def test_quirk_delete_ignores_if_generation_match(stack, config):
    """fake-gcs-server deletes whatever generation ifGenerationMatch names:
    a conditional delete (releasing a claim) is not proven by this fake."""
    ops = config["gcp"]["buckets"]["ops"]
    name = unique("claims/delete")
    status, obj = stack.upload_multipart(ops, name, b"x", ifGenerationMatch=0)
    assert status == 200
    stale = str(int(obj["generation"]) - 1)
    status, _ = request("DELETE", f"{stack.gcs}/storage/v1/b/{ops}/o/{name.replace('/', '%2F')}"
                        f"?ifGenerationMatch={stale}")
    assert status in (200, 204)
    assert stack.object_meta(ops, name)[0] == 404
