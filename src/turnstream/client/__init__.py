"""The Python SDK of turnstream: stream an execution's records exactly once, or write them in
unary calls. See docs/sdk.md.

>>> from turnstream.client import StreamWriter
>>> async with StreamWriter("127.0.0.1:50051", "exec-42", execution_id="exec-42") as w:
...     await w.turn(turn_number=1, model="claude-sonnet-4-5", started_at=datetime.now(UTC),
...                  input_tokens=1200, output_tokens=350)
...     await w.tool_call(tool_name="read_file", tool_use_id="toolu_01", started_at=...,
...                       tool_input={"path": "app.py"}, success=True)
...     await w.flush()     # everything above is committed and queryable
"""

from turnstream.client.channel import tls_credentials
from turnstream.client.convert import build
from turnstream.client.errors import Rejection, RPCError, StreamError
from turnstream.client.outbox import Limits
from turnstream.client.stream import StreamWriter
from turnstream.client.sync import SyncClient, SyncStreamWriter
from turnstream.client.unary import Client

__all__ = [
    "Client",
    "Limits",
    "RPCError",
    "Rejection",
    "StreamError",
    "StreamWriter",
    "SyncClient",
    "SyncStreamWriter",
    "build",
    "tls_credentials",
]
