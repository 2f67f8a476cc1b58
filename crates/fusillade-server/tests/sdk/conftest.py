"""Fixtures: a real `fusillade serve` (the binary named by FUSILLADE_BIN) on a free port, with
two tenants' API keys, in front of a `fusillade mock-upstream` process that is slow enough to
catch batches in flight and fails some requests so that error files have lines."""

import os
import socket
import subprocess
import time
import urllib.request

import openai
import pytest

ACME_KEY = "sk-acme-sdk-0123456789"
GLOBEX_KEY = "sk-globex-sdk-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, process, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[1]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    binary = os.environ["FUSILLADE_BIN"]
    work = tmp_path_factory.mktemp("serve")
    mock_port, api_port = free_port(), free_port()
    log = open(work / "processes.log", "w")
    mock = subprocess.Popen(
        [binary, "mock-upstream", "--listen", f"127.0.0.1:{mock_port}",
         "--latency-ms", "50", "--error-rate", "0.25"],
        stdout=log, stderr=subprocess.STDOUT)
    env = dict(os.environ, FUSILLADE_API_KEYS=f"acme:{ACME_KEY},globex:{GLOBEX_KEY}")
    serve = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{api_port}",
         "--database", str(work / "api.db"), "--upstream", f"http://127.0.0.1:{mock_port}",
         "--max-attempts", "1", "--concurrency", "8"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{mock_port}/healthz", mock)
        wait_ready(f"http://127.0.0.1:{api_port}/readyz", serve)
        yield f"http://127.0.0.1:{api_port}/v1"
    finally:
        stop(serve)
        stop(mock)
        log.close()
    assert serve.returncode == 0, (work / "processes.log").read_text()


def client_for(base_url, key):
    # No client retries: every answer the server gives is asserted as it is.
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


@pytest.fixture
def acme(server):
    return client_for(server, ACME_KEY)


@pytest.fixture
def globex(server):
    return client_for(server, GLOBEX_KEY)


@pytest.fixture
def stranger(server):
    return client_for(server, "sk-nobody-0123456789")
