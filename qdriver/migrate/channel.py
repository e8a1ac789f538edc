"""The two sides of a migration talk in JSON lines: requests from the source,
replies from the destination, over the destination command's stdin and stdout
(a pipe, or an ssh connection).  A reply carries a result or an error with its
libvirt code, which the source raises as the same error class.  The channel
closing is the destination's abort: it takes back everything it made."""
from __future__ import annotations

import json
from typing import Any

from anyio.abc import ByteReceiveStream, ByteSendStream
from anyio.streams.buffered import BufferedByteReceiveStream

from .. import errors
from ..errors import OperationFailedError, QDriverError

FORMAT = 1
"""The protocol's version: both sides refuse a peer that speaks another."""
MAX_LINE = 1 << 24


def error_class(code: int) -> type[QDriverError]:
    """The qdriver error class of a libvirt error code (the first that has it)."""
    for cls in _all(QDriverError):
        if int(cls.code) == code:
            return cls
    return errors.InternalError


def _all(cls: type[QDriverError]) -> list[type[QDriverError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all(sub)
    return out


class Channel:
    """One end: send a JSON object per line, receive one."""

    def __init__(self, receive: ByteReceiveStream, send: ByteSendStream, peer: str) -> None:
        self.incoming = BufferedByteReceiveStream(receive)
        self.outgoing = send
        self.peer = peer

    async def send(self, message: dict[str, Any]) -> None:
        await self.outgoing.send((json.dumps(message | {"v": FORMAT}) + "\n").encode())

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None when the peer closed the channel."""
        try:
            line = await self.incoming.receive_until(b"\n", MAX_LINE)
        except Exception:  # EOF, or a broken pipe: the peer is gone
            return None
        message = json.loads(line)
        version = message.get("v") if isinstance(message, dict) else None
        if version != FORMAT:
            raise OperationFailedError(f"{self.peer} speaks another migration protocol "
                                       f"(version {version}, expected {FORMAT}): update "
                                       "qdriver on both hosts")
        return dict(message)

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request and return its result; raise the peer's error as its own.

        :raise OperationFailedError: the peer went away without an answer.
        """
        await self.send(message)
        reply = await self.receive()
        if reply is None:
            raise OperationFailedError(f"{self.peer} closed the migration channel "
                                       f"during '{message.get('op')}'")
        if "error" in reply:
            err = reply["error"]
            raise error_class(int(err.get("code", 1)))(f"{self.peer}: {err.get('detail')}")
        return dict(reply.get("ok") or {})

    async def reply(self, result: dict[str, Any]) -> None:
        await self.send({"ok": result})

    async def fail(self, err: BaseException) -> None:
        code = int(err.code) if isinstance(err, QDriverError) else 1
        detail = err.detail if isinstance(err, QDriverError) else f"{type(err).__name__}: {err}"
        await self.send({"error": {"code": code, "detail": detail}})


__all__ = ["Channel", "FORMAT", "error_class"]
