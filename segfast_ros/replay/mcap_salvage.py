"""Read the intact part of an mcap bag that was cut off (no footer, summary or index).

A robot that loses power while recording leaves an mcap file without its end: rosbags (like
rosbag2) reads the summary at the end of the file first, so it refuses the whole bag. The data
before the cut is still there. :class:`SalvageReader` walks the records from the start (MCAP
spec: an 8-byte magic, then records of ``opcode u8, length u64, content``), collects schemas and
channels, and yields the messages of every complete record and chunk before the first broken
one. It offers the small part of rosbags' ``Reader`` interface the replay uses.

Chunk compression: none, lz4 or zstd, with the modules rosbags itself depends on.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterator
from pathlib import Path

from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag2,
    MessageDefinition,
    MessageDefinitionFormat,
    TopicInfo,
)

MAGIC = b"\x89MCAP0\r\n"
_SCHEMA, _CHANNEL, _MESSAGE, _CHUNK, _DATA_END, _FOOTER = 0x03, 0x04, 0x05, 0x06, 0x0F, 0x02


class _Truncated(Exception):
    """A record runs past the end of the data, or cannot be parsed."""


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "lz4":
        from lz4.frame import decompress

        return decompress(data)
    if compression == "zstd":
        try:
            from compression import zstd  # Python 3.14
        except ImportError:
            from backports import zstd
        return zstd.decompress(data)
    raise _Truncated(f"unsupported chunk compression {compression!r}")


class _Cursor:
    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise _Truncated(f"{n} bytes needed at offset {self.pos}, {self.end - self.pos} left")
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        return bytes(self.take(self.u32())).decode()


class SalvageReader:
    """The messages of a cut-off mcap bag up to the cut, in file order.

    Args:
        path: a bag folder holding one ``.mcap`` file, or the file.

    Attributes:
        read_bytes: where the intact part ends (the first broken record starts there).
        size: the file's size.
        reason: why reading stopped there.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        files = sorted(self.path.glob("*.mcap")) if self.path.is_dir() else [self.path]
        if len(files) != 1:
            raise ValueError(f"expected one .mcap file in {self.path}, found {len(files)}")
        self.file = files[0]
        self.data = self.file.read_bytes()
        self.size = len(self.data)
        self.read_bytes = 0
        self.reason = ""
        self._schemas: dict[int, tuple[str, str]] = {}
        self._channels: dict[int, Connection] = {}
        self._counts: dict[int, int] = {}
        self._times: list[int] = []
        for channel_id, log_time, _ in self._walk():
            self._counts[channel_id] = self._counts.get(channel_id, 0) + 1
            if not self._times:
                self._times = [log_time, log_time]
            self._times = [min(self._times[0], log_time), max(self._times[1], log_time)]
        self.connections = [
            c._replace(msgcount=self._counts.get(c.id, 0)) for c in self._channels.values()
        ]

    # The part of rosbags' Reader the replay uses.
    @property
    def message_count(self) -> int:
        return sum(self._counts.values())

    @property
    def start_time(self) -> int:
        return self._times[0] if self._times else 0

    @property
    def duration(self) -> int:
        return self._times[1] - self._times[0] if self._times else 0

    @property
    def topics(self) -> dict[str, TopicInfo]:
        out: dict[str, TopicInfo] = {}
        for c in self.connections:
            if c.topic in out:
                info = out[c.topic]
                out[c.topic] = info._replace(
                    msgcount=info.msgcount + c.msgcount, connections=[*info.connections, c]
                )
            else:
                out[c.topic] = TopicInfo(c.msgtype, c.msgdef, c.msgcount, [c])
        return out

    def messages(
        self, connections: Collection[Connection] = ()
    ) -> Iterator[tuple[Connection, int, bytes]]:
        wanted = {c.id for c in connections} or set(self._channels)
        by_id = {c.id: c for c in self.connections}
        for channel_id, log_time, data in self._walk():
            if channel_id in wanted:
                yield by_id[channel_id], log_time, data

    def close(self) -> None:
        self.data = b""

    def describe(self) -> str:
        """What was readable: for the replay's error message."""
        return (
            f"input bag {self.path} is cut off: its mcap file has no footer or index (a "
            f"recording that was interrupted); read {self.message_count} messages from the "
            f"first {self.read_bytes} of {self.size} bytes, up to the first broken record "
            f"({self.reason})"
        )

    # ---------------------------------------------------------------------------- parsing

    def _walk(self) -> Iterator[tuple[int, int, bytes]]:
        """``(channel id, log time, data)`` of every message before the first broken record."""
        if not self.data.startswith(MAGIC):
            raise ValueError(f"{self.file} is not an mcap file (no MCAP magic)")
        cur = _Cursor(self.data, len(MAGIC))
        while cur.pos < cur.end:
            start = cur.pos
            try:
                opcode = cur.take(1)[0]
                length = cur.u64()
                record = _Cursor(self.data, cur.pos, cur.pos + length)
                if record.end > cur.end:
                    raise _Truncated(f"record at byte {start} ends past the end of the file")
                cur.pos = record.end
                if opcode in (_DATA_END, _FOOTER):
                    self.read_bytes, self.reason = start, "end of data"
                    return
                messages = list(self._record(opcode, record))
            except (_Truncated, UnicodeDecodeError, struct.error) as err:
                self.read_bytes, self.reason = start, str(err)
                return
            yield from messages
            self.read_bytes = cur.pos
        self.reason = "end of file"

    def _record(self, opcode: int, rec: _Cursor) -> Iterator[tuple[int, int, bytes]]:
        if opcode == _SCHEMA:
            schema_id, name, encoding = rec.u16(), rec.string(), rec.string()
            data = bytes(rec.take(rec.u32())).decode()
            self._schemas[schema_id] = (name, data if encoding == "ros2msg" else "")
        elif opcode == _CHANNEL:
            channel_id, schema_id, topic = rec.u16(), rec.u16(), rec.string()
            encoding = rec.string()
            name, msgdef = self._schemas.get(schema_id, ("", ""))
            self._channels.setdefault(
                channel_id,
                Connection(
                    id=channel_id,
                    topic=topic,
                    msgtype=name,
                    msgdef=MessageDefinition(MessageDefinitionFormat.MSG, msgdef),
                    digest="",
                    msgcount=0,
                    ext=ConnectionExtRosbag2(encoding, []),
                    owner=self,
                ),
            )
        elif opcode == _MESSAGE:
            channel_id, _seq, log_time, _pub = rec.u16(), rec.u32(), rec.u64(), rec.u64()
            yield channel_id, log_time, bytes(rec.take(rec.end - rec.pos))
        elif opcode == _CHUNK:
            _start, _end, size, _crc = rec.u64(), rec.u64(), rec.u64(), rec.u32()
            compression = rec.string()
            raw = _decompress(bytes(rec.take(rec.u64())), compression, size)
            inner = _Cursor(raw)
            while inner.pos < inner.end:
                op = inner.take(1)[0]
                length = inner.u64()
                sub = _Cursor(raw, inner.pos, inner.pos + length)
                if sub.end > inner.end:
                    raise _Truncated("a record inside a chunk runs past the chunk")
                inner.pos = sub.end
                yield from self._record(op, sub)
