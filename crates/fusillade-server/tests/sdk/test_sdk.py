"""The batch workflow through the official openai SDK, unmodified, against `fusillade serve`:
upload, create, poll, list with pagination, download output and errors, cancel, delete, and
the error paths, asserting on what the SDK returns."""

import io
import json
import os
import subprocess
import time

import openai
import pytest

FINAL = {"completed", "failed", "expired", "cancelled"}


def jsonl(n, prefix="req"):
    lines = []
    for i in range(n):
        lines.append(json.dumps({
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": f"model-{i % 2}", "messages": [{"role": "user", "content": f"hi {i}"}]},
        }))
    return ("\n".join(lines) + "\n").encode()


def upload(client, content, name="requests.jsonl"):
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch")


def create(client, file_id, **extra):
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", **extra)


def poll(client, batch_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout}s"
        time.sleep(0.1)


def lines_of(client, file_id):
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_upload_create_poll_download(acme):
    content = jsonl(40)
    file = upload(acme, content)
    assert file.id.startswith("file-")
    assert (file.object, file.purpose, file.status) == ("file", "batch", "processed")
    assert file.bytes == len(content) and file.filename == "requests.jsonl"
    assert acme.files.retrieve(file.id).id == file.id

    batch = create(acme, file.id, metadata={"project": "sdk-test"})
    assert batch.id.startswith("batch_") and batch.object == "batch"
    assert batch.status == "in_progress"
    assert batch.expires_at == batch.created_at + 86400
    assert batch.metadata == {"project": "sdk-test"}
    assert batch.request_counts.total == 40

    done = poll(acme, batch.id)
    assert done.status == "completed"
    assert done.completed_at >= done.finalizing_at >= done.in_progress_at >= done.created_at
    counts = done.request_counts
    assert counts.completed + counts.failed == counts.total == 40
    assert counts.completed > 0 and counts.failed > 0, "the mock fails a quarter of requests"

    output = lines_of(acme, done.output_file_id)
    errors = lines_of(acme, done.error_file_id)
    assert acme.files.retrieve(done.output_file_id).purpose == "batch_output"
    assert len(output) == counts.completed and len(errors) == counts.failed
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(40))
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["object"] == "chat.completion"
    for line in errors:
        assert line["response"]["status_code"] == 500 and line["error"]["code"]

    # The input file's content is its lines.
    sent = [json.loads(line) for line in content.decode().splitlines()]
    assert lines_of(acme, file.id) == sent


def test_lists_page_through_every_item_once(acme):
    uploaded = [upload(acme, jsonl(1, prefix=f"page{i}")).id for i in range(5)]
    seen = [f.id for f in acme.files.list(limit=2)]
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in uploaded] == list(reversed(uploaded))
    ascending = [f.id for f in acme.files.list(limit=3, order="asc", purpose="batch")]
    assert [i for i in ascending if i in uploaded] == uploaded

    created = [create(acme, uploaded[0]).id for _ in range(3)]
    batches = [b.id for b in acme.batches.list(limit=2)]
    assert len(batches) == len(set(batches))
    assert batches[:3] == list(reversed(created))
    first_page = acme.batches.list(limit=1)
    assert len(first_page.data) == 1 and first_page.has_more


def test_cancel_a_running_batch(acme):
    file = upload(acme, jsonl(400, prefix="slow"))
    batch = create(acme, file.id)
    cancelling = acme.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None
    done = poll(acme, batch.id)
    assert done.status == "cancelled"
    assert done.cancelled_at >= done.cancelling_at
    counts = done.request_counts
    assert counts.completed + counts.failed == counts.total == 400
    errors = lines_of(acme, done.error_file_id)
    assert any(line["error"]["code"] == "batch_cancelled" for line in errors)
    again = acme.batches.cancel(batch.id)
    assert again.status == "cancelled" and again.cancelled_at == done.cancelled_at


def test_delete_a_file(acme):
    file = upload(acme, jsonl(2))
    deleted = acme.files.delete(file.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (file.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        acme.files.retrieve(file.id)


def test_bad_lines_are_rejected_with_the_line(acme):
    content = jsonl(2) + b'{"custom_id": "x", "method": "POST"}\n'
    with pytest.raises(openai.BadRequestError) as e:
        upload(acme, content)
    assert "Line 3:" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        acme.files.create(file=("x.jsonl", io.BytesIO(jsonl(1))), purpose="fine-tune")
    assert e.value.param == "purpose"


def test_unknown_ids_and_other_tenants_are_not_found(acme, globex):
    with pytest.raises(openai.NotFoundError) as e:
        acme.files.retrieve("file-does-not-exist")
    assert e.value.body["param"] == "id"
    with pytest.raises(openai.NotFoundError):
        acme.batches.retrieve("batch_does_not_exist")
    file = upload(acme, jsonl(1))
    batch = create(acme, file.id)
    with pytest.raises(openai.NotFoundError):
        globex.files.retrieve(file.id)
    with pytest.raises(openai.NotFoundError):
        globex.files.content(file.id)
    with pytest.raises(openai.NotFoundError):
        globex.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        globex.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        create(globex, file.id)
    assert all(f.id != file.id for f in globex.files.list())


def test_bad_parameters_and_cursors(acme):
    file = upload(acme, jsonl(1))
    with pytest.raises(openai.BadRequestError) as e:
        acme.files.list(after="file-not-a-cursor")
    assert e.value.param == "after"
    with pytest.raises(openai.BadRequestError) as e:
        acme.batches.list(after="batch_not_a_cursor")
    assert e.value.param == "after"
    with pytest.raises(openai.BadRequestError) as e:
        create(acme, file.id, metadata={f"k{i}": "v" for i in range(17)})
    assert e.value.param == "metadata"
    with pytest.raises(openai.BadRequestError) as e:
        acme.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="1h")
    assert e.value.param == "completion_window"


def test_a_bad_key_is_an_authentication_error(stranger):
    with pytest.raises(openai.AuthenticationError) as e:
        stranger.files.list()
    assert e.value.code == "invalid_api_key"


def test_an_open_server_refuses_a_public_address(tmp_path):
    # No API keys and a non-loopback address: `serve` must refuse before listening.
    env = {k: v for k, v in os.environ.items() if k != "FUSILLADE_API_KEYS"}
    done = subprocess.run(
        [os.environ["FUSILLADE_BIN"], "serve", "--listen", "0.0.0.0:0", "--upstream", "mock",
         "--database", str(tmp_path / "open.db")],
        env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--allow-open" in done.stderr
