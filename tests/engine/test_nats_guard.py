"""Guards for the nats-py private members `iceberg_lake/engine/` relies on (listed in
`iceberg_lake/engine/__init__.py`): the version they were checked on and their behaviour.

When a guard fails after an upgrade: re-check the behaviour named in its docstring (and
`Client._send_command` in `tests/test_replay_nats_batch.py`), then extend
`NATS_PY_VERSIONS_CHECKED`. Budget: < 2 s (the session's nats-server).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import time

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from iceberg_lake.config import load_settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.engine.nats_tail import _stream_info
from iceberg_lake.exceptions import TransientError
from iceberg_lake.testing import NatsServer

#: nats-py versions on which `Client._send_command` and `JetStreamContext._api_request`,
#: `_prefix` and `_timeout` were checked.
NATS_PY_VERSIONS_CHECKED = ("2.16.",)


def test_nats_py_version_is_one_the_private_members_were_checked_on() -> None:
    version = importlib.metadata.version("nats-py")
    assert version.startswith(NATS_PY_VERSIONS_CHECKED), (
        f"nats-py {version}: re-check the nats-py private members listed in "
        "iceberg_lake/engine/__init__.py, then extend NATS_PY_VERSIONS_CHECKED"
    )


def test_jetstream_context_keeps_the_prefix_and_timeout_it_was_made_with() -> None:
    """`_stream_info` builds its subject from `js._prefix` (the domain's API prefix) and its
    timeout from `js._timeout`, and sends with `_api_request(subject, body, timeout=)`."""
    settings = load_settings({"LAKE_NATS_DOMAIN": "hub"})
    js = bus.jetstream(Client(), settings, timeout=7.5)
    assert (js._prefix, js._timeout) == ("$JS.hub.API", 7.5)
    assert Client().jetstream()._prefix == "$JS.API"
    assert Client().jetstream(domain="hub")._prefix == "$JS.hub.API"
    assert inspect.iscoroutinefunction(JetStreamContext._api_request)
    params = list(inspect.signature(JetStreamContext._api_request).parameters)
    assert params == ["self", "req_subject", "req", "timeout"]


def test_api_request_answers_stream_info_with_the_removed_sequences(
    nats_server: NatsServer,
) -> None:
    """`_api_request` returns the server's JSON reply as a dict (with `deleted` only when asked)
    and raises nats-py's API error for an error reply (`nats_errors` maps it)."""

    async def go() -> None:
        import nats as nats_py
        from nats.js.api import StreamConfig

        nc = await nats_py.connect(nats_server.url)
        js = nc.jetstream()
        name = f"NATSGUARD{time.time_ns()}"
        try:
            await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
            for _ in range(4):
                await js.publish(f"{name.lower()}.x", b"m")
            await js.delete_msg(name, 2)
            full = await _stream_info(js, name, details=True)
            assert full["config"]["name"] == name and full["created"]
            assert full["state"]["deleted"] == [2] and full["state"]["last_seq"] == 4
            short = await _stream_info(js, name, details=False)
            assert "deleted" not in short["state"] and short["state"]["num_deleted"] == 1
            with pytest.raises(TransientError, match="stream not found"):
                await _stream_info(js, f"{name}X", details=False)
        finally:
            await js.delete_stream(name)
            await nc.close()

    asyncio.run(go())
