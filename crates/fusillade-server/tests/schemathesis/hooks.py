"""Schemathesis hooks for tests/schemathesis.rs: a check that every error answer of the API
is in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, nothing more."""

import json

import schemathesis

# Operations whose errors are not OpenAI's (they are outside /v1): /metrics answers 404 in
# text when no recorder is installed, /readyz 503 in text. Everything under /v1 must comply.
OPENAI_PREFIX = "/v1/"


@schemathesis.check
def openai_error_shape(ctx, response, case):
    """Every 4xx/5xx answer of a /v1 operation is exactly OpenAI's error object."""
    if response.status_code < 400 or not case.operation.path.startswith(OPENAI_PREFIX):
        return
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if not content_type.startswith("application/json"):
        raise AssertionError(f"error with content-type {content_type!r}: {response.text[:200]!r}")
    try:
        body = json.loads(response.text)
    except ValueError as e:
        raise AssertionError(f"error body is not JSON ({e}): {response.text[:200]!r}") from e
    if not isinstance(body, dict) or set(body) != {"error"}:
        raise AssertionError(f"error body is not {{'error': ...}}: {body!r}")
    error = body["error"]
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        raise AssertionError(f"error object keys are not message/type/param/code: {error!r}")
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        raise AssertionError(f"message and type must be strings: {error!r}")
    for key in ("param", "code"):
        if error[key] is not None and not isinstance(error[key], str):
            raise AssertionError(f"{key} must be a string or null: {error!r}")
