"""MCAP recordings of ROS 2 (the ``ros2`` profile, CDR-encoded messages).

* ``observation.state``: ``sensor_msgs/msg/JointState.position`` on
  ``state_topic`` (default ``/joint_states``). Frames are the state messages,
  timed by their ``header.stamp`` (integer nanoseconds).
* ``action``: ``action_topic`` carrying ``JointState`` (its ``position``, timed
  by ``header.stamp``) or ``std_msgs/msg/Float64MultiArray`` (its ``data``,
  timed by the message's log time). Without the option, the one other topic
  of either type. Each frame's action is the latest action at or before the
  frame's stamp (within the same file); frames before the first action are
  dropped, with a note.
* Episodes: a new file starts a new episode, and so does a pause between two
  state stamps longer than ``episode_gap`` seconds (default 1.0).
* fps: the ``fps`` option, else estimated from the median stamp interval.

A path is one ``.mcap`` file or a folder of them (sorted by name); messages
are decoded one at a time, one episode held in memory.

A file may be crafted (issue 14). Before the mcap library reads it, its records
are walked once (:func:`prescan`): every record must lie inside the file, every
chunk index point at a chunk, and every compressed chunk declare at most
:data:`MAX_CHUNK_BYTES` once decompressed (its zstd/LZ4 frame too); reads are
then capped at the file's end. Messages are decoded with the standard ROS 2
definitions of JointState and Float64MultiArray, never with the definitions the
file carries; vectors hold at most ``MAX_DIM`` values and an episode at most
``MAX_EPISODE_VALUES``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap_ros2._dynamic import generate_dynamic

from dataspace.connectors.reader import (
    MAX_DIM,
    MAX_EPISODE_VALUES,
    ColumnError,
    CorruptFileError,
    DimensionError,
    EnrollError,
    MissingFileError,
    SizeLimitError,
    make_episode,
    meta_fps,
    walk_files,
)
from dataspace.schema import DatasetInfo, Episode

try:  # the chunk decompressors the mcap library uses raise their own errors
    from zstandard import ZstdError
except ImportError:  # pragma: no cover
    ZstdError = ValueError  # type: ignore[assignment,misc]

#: what a malformed file makes the mcap library raise (found by tests/assurance fuzzing);
#: RuntimeError covers the CDR reader's seek errors and a recursive message definition
_CORRUPT = (McapError, OSError, ValueError, EOFError, AssertionError, KeyError, struct.error,
            ZstdError, IndexError, TypeError, RuntimeError, OverflowError)  # fmt: skip

#: bytes one chunk may decompress to (ROS 2 writers use about 1 MiB)
MAX_CHUNK_BYTES = 256 << 20
MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER, _OP_CHUNK, _OP_CHUNK_INDEX = 0x02, 0x06, 0x08

FORMAT = "mcap"
OPTIONS = ("state_topic", "action_topic", "episode_gap", "fps")
JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"
_ACTION_TYPES = (JOINT_STATE, FLOAT64_ARRAY)

#: the standard ROS 2 definitions the messages are decoded with
_MSGDEFS = {
    JOINT_STATE: """std_msgs/Header header
string[] name
float64[] position
float64[] velocity
float64[] effort
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
""",
    FLOAT64_ARRAY: """std_msgs/MultiArrayLayout layout
float64[] data
================================================================================
MSG: std_msgs/MultiArrayLayout
std_msgs/MultiArrayDimension[] dim
uint32 data_offset
================================================================================
MSG: std_msgs/MultiArrayDimension
string label
uint32 size
uint32 stride
""",
}
_DECODERS: dict[str, Callable[[bytes], Any]] = {}


def _decoder(schema_name: str) -> Callable[[bytes], Any]:
    if schema_name not in _DECODERS:
        _DECODERS[schema_name] = generate_dynamic(schema_name, _MSGDEFS[schema_name])[schema_name]
    return _DECODERS[schema_name]


class _Capped:
    """A seekable file whose reads never ask for more than is left before its end
    (the mcap library reads a declared length in one call)."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self._fh = fh
        self._size = size

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self._size - self._fh.tell())
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def prescan(f: Path, fh: IO[bytes]) -> None:
    """Walk the top-level records of an MCAP file; refuse what would make the mcap
    library allocate more than the file holds (module docstring)."""
    size = fh.seek(0, 2)
    fh.seek(0)
    if size < 2 * len(MAGIC) or fh.read(len(MAGIC)) != MAGIC:
        raise CorruptFileError("not an MCAP file (no magic at the start)", f)
    fh.seek(size - len(MAGIC))
    if fh.read(len(MAGIC)) != MAGIC:
        raise CorruptFileError("no MCAP magic at the end (truncated or not finished)", f)
    end = size - len(MAGIC)
    pos = len(MAGIC)
    records: set[int] = set()
    chunks: set[int] = set()
    pointers: list[tuple[str, int]] = []
    while pos < end:
        fh.seek(pos)
        head = fh.read(9)
        if len(head) < 9:
            raise CorruptFileError(f"record at byte {pos} is cut short", f)
        op, length = struct.unpack("<BQ", head)
        if length > end - pos - 9:
            raise SizeLimitError(
                f"record at byte {pos} declares {length} bytes, past the end of the file", f
            )
        records.add(pos)
        if op == _OP_CHUNK:
            _check_chunk(f, fh, pos, length)
            chunks.add(pos)
        elif op == _OP_CHUNK_INDEX and length >= 32:
            _, _, start, _ = struct.unpack("<QQQQ", fh.read(32))
            pointers.append(("chunk index", start))
        elif op == _OP_FOOTER and length >= 16:
            summary, offsets = struct.unpack("<QQ", fh.read(16))
            pointers += [("summary", summary), ("summary offset", offsets)]
        pos += 9 + length
    for what, at in pointers:
        if at and at not in (chunks if what == "chunk index" else records):
            raise CorruptFileError(f"{what} points at byte {at}, not at a record", f)


def _check_chunk(f: Path, fh: IO[bytes], pos: int, length: int) -> None:
    body = fh.read(min(length, 4096))
    try:
        _start, _end, uncompressed, _crc, clen = struct.unpack_from("<QQQII", body)
        compression = body[32 : 32 + clen].decode()
        (dlen,) = struct.unpack_from("<Q", body, 32 + clen)
    except (struct.error, UnicodeDecodeError) as e:
        raise CorruptFileError(f"chunk at byte {pos} has a malformed header", f) from e
    if 32 + clen + 8 + dlen > length:
        raise SizeLimitError(f"chunk at byte {pos} declares {dlen} bytes of data, past its end", f)
    if not compression:
        return
    if uncompressed > MAX_CHUNK_BYTES:
        raise SizeLimitError(
            f"chunk at byte {pos} declares {uncompressed} bytes uncompressed "
            f"(at most {MAX_CHUNK_BYTES})",
            f,
        )
    frame = body[32 + clen + 8 : 32 + clen + 8 + min(dlen, 32)]
    declared = -1
    try:
        if compression == "zstd":
            import zstandard

            declared = zstandard.frame_content_size(frame)
        elif compression == "lz4":
            import lz4.frame

            declared = int(lz4.frame.get_frame_info(frame).get("content_size") or -1)
    except (ImportError, ValueError, RuntimeError, ZstdError) as e:
        raise CorruptFileError(f"chunk at byte {pos}: bad {compression} frame ({e})", f) from e
    if declared > uncompressed:
        raise SizeLimitError(
            f"chunk at byte {pos}: its {compression} frame declares {declared} bytes, the chunk "
            f"{uncompressed}",
            f,
        )


class McapReader:
    """Reads ROS 2 MCAP files (see module docstring)."""

    format = FORMAT

    def __init__(
        self,
        path: Path,
        state_topic: str | None = None,
        action_topic: str | None = None,
        episode_gap: float | None = None,
        fps: float | None = None,
    ) -> None:
        self.path = path
        self.files = [p for p in walk_files(path, "**/*.mcap")] if path.is_dir() else [path]
        if not self.files:
            raise MissingFileError("no .mcap files", path)
        self.state_topic = state_topic or "/joint_states"
        gap = 1.0 if episode_gap is None else episode_gap
        if (
            isinstance(gap, bool)
            or not isinstance(gap, int | float)
            or not (math.isfinite(gap) and 0 <= gap <= 1e9)
        ):
            raise EnrollError(f"--episode-gap must be a number of seconds >= 0, not {gap!r}", path)
        self.gap_ns = round(gap * 1e9)
        fps = meta_fps(fps, path, "--fps")
        topics = {f: _topics(f) for f in self.files}
        for f, t in topics.items():
            if self.state_topic not in t:
                raise ColumnError(
                    f"no state topic {self.state_topic!r} (topics: {sorted(t)}); "
                    "name it with --state-topic",
                    f,
                )
            if t[self.state_topic] != JOINT_STATE:
                raise ColumnError(
                    f"{self.state_topic} carries {t[self.state_topic]}, expected {JOINT_STATE}", f
                )
        first = topics[self.files[0]]
        if action_topic is None:
            candidates = sorted(
                k for k, v in first.items() if k != self.state_topic and v in _ACTION_TYPES
            )
            if len(candidates) != 1:
                raise ColumnError(
                    f"{'ambiguous' if candidates else 'no'} action topic "
                    f"(candidates {candidates}); choose one with --action-topic",
                    self.files[0],
                )
            action_topic = candidates[0]
        self.action_topic = action_topic
        for f, t in topics.items():
            if t.get(action_topic) not in _ACTION_TYPES:
                raise ColumnError(
                    f"action topic {action_topic!r} missing or not JointState/Float64MultiArray "
                    f"(topics: {sorted(t)})",
                    f,
                )
        self.info = DatasetInfo(
            name=path.stem if path.is_file() else path.name,
            source_format="mcap-ros2",
            fps=float(fps) if fps is not None else None,
        )
        self._index = 0

    def episodes(self) -> Iterator[Episode]:
        self._index = 0
        for f in self.files:
            yield from self._file(f)

    def _file(self, f: Path) -> Iterator[Episode]:
        st_t: list[int] = []
        st_v: list[Any] = []
        ac_t: list[int] = []
        ac_v: list[Any] = []
        values = 0  # state and action values held for the current episode
        try:
            with f.open("rb") as raw:
                prescan(f, raw)
                fh = _Capped(raw, raw.seek(0, 2))
                fh.seek(0)
                reader = make_reader(fh)
                for schema, channel, message in reader.iter_messages(
                    topics=[self.state_topic, self.action_topic]
                ):
                    msg = self._decode(f, schema, channel, message)
                    if channel.topic == self.state_topic:
                        stamp = _stamp(msg)
                        if st_t and stamp - st_t[-1] > self.gap_ns:
                            yield self._episode(f, st_t, st_v, ac_t, ac_v)
                            ac_t, ac_v = _keep_tail(ac_t, ac_v, st_t[-1])
                            st_t, st_v = [], []
                            values = sum(len(v) for v in ac_v)
                        if not self.info.state_names and msg.name:
                            self.info.state_names = [str(n) for n in msg.name[:MAX_DIM]]
                        st_t.append(stamp)
                        st_v.append(_vector(msg.position, "state", f, self._index))
                        values += len(msg.position)
                    else:
                        if hasattr(msg, "position"):
                            ac_t.append(_stamp(msg))
                            ac_v.append(_vector(msg.position, "action", f, self._index))
                            if not self.info.action_names and msg.name:
                                self.info.action_names = [str(n) for n in msg.name[:MAX_DIM]]
                        else:
                            if not 0 <= message.log_time < 2**63:
                                raise CorruptFileError(
                                    f"log time {message.log_time} ns is out of range", f
                                )
                            ac_t.append(int(message.log_time))
                            ac_v.append(_vector(msg.data, "action", f, self._index))
                        values += len(ac_v[-1])
                    if values + len(st_t) > MAX_EPISODE_VALUES:
                        raise SizeLimitError(
                            f"more than {MAX_EPISODE_VALUES} state and action values in one "
                            "episode",
                            f,
                            self._index,
                        )
                if st_t:
                    yield self._episode(f, st_t, st_v, ac_t, ac_v)
        except _CORRUPT as e:
            raise CorruptFileError(
                f"cannot read MCAP ({type(e).__name__}: {_msg(e)})", f, self._index
            ) from e

    def _decode(self, f: Path, schema: Any, channel: Any, message: Any) -> Any:
        """A message decoded with the standard definition of its (checked) type."""
        name = getattr(schema, "name", None)
        if name not in _MSGDEFS or channel.message_encoding != "cdr":
            raise ColumnError(
                f"topic {channel.topic} carries {name} ({channel.message_encoding}), expected "
                f"{' or '.join(_MSGDEFS)} in CDR",
                f,
                self._index,
            )
        try:
            return _decoder(name)(message.data)
        except _CORRUPT as e:
            raise CorruptFileError(
                f"message on {channel.topic} at {message.log_time} ns cannot be decoded as "
                f"{name} ({type(e).__name__}: {_msg(e)})",
                f,
                self._index,
            ) from e

    def _episode(
        self, f: Path, st_t: list[int], st_v: list[Any], ac_t: list[int], ac_v: list[Any]
    ) -> Episode:
        index = self._index
        self._index += 1
        stamps = np.asarray(st_t, dtype=np.int64)
        state = _matrix(st_v, "state", f, index)
        if not ac_t:
            raise DimensionError(f"no action message on {self.action_topic} at or before", f, index)
        at = np.asarray(ac_t, dtype=np.int64)
        order = np.argsort(at, kind="stable")
        at = at[order]
        action_all = _matrix(ac_v, "action", f, index)[order]
        idx = np.searchsorted(at, stamps, side="right") - 1
        keep = idx >= 0
        dropped = int((~keep).sum())
        if dropped:
            self.info.notes.append(
                f"{f} episode {index}: {dropped} frames before the first action dropped"
            )
            stamps, state, idx = stamps[keep], state[keep], idx[keep]
        return make_episode(stamps, "ns", state, action_all[idx], source=str(f), episode=index)


def _keep_tail(ac_t: list[int], ac_v: list[Any], end: int) -> tuple[list[int], list[Any]]:
    """After an episode ending at ``end``: keep the actions after it and the latest one
    at or before it (that one may still be the latest action for the next frame)."""
    t = np.asarray(ac_t, dtype=np.int64)
    later = np.flatnonzero(t > end).tolist()
    before = np.flatnonzero(t <= end)
    keep = ([int(before[np.argmax(t[before])])] if before.size else []) + later
    return [ac_t[i] for i in keep], [ac_v[i] for i in keep]


def _vector(values: Any, what: str, f: Path, episode: int) -> Any:
    if len(values) > MAX_DIM:
        raise SizeLimitError(f"a {what} message holds {len(values)} values", f, episode)
    return values


def _msg(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _matrix(rows: list[Any], what: str, f: Path, episode: int) -> np.ndarray:
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise DimensionError(f"{what} messages have differing lengths {sorted(widths)}", f, episode)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), widths.pop())


def _stamp(msg: Any) -> int:
    s = msg.header.stamp
    return int(s.sec) * 1_000_000_000 + int(s.nanosec)


def _topics(f: Path) -> dict[str, str]:
    """topic -> schema name, from the file's summary (or a scan when it has none)."""
    try:
        with f.open("rb") as raw:
            prescan(f, raw)
            fh = _Capped(raw, raw.seek(0, 2))
            fh.seek(0)
            reader = make_reader(fh)
            summary = reader.get_summary()
            if summary is None:
                raise CorruptFileError("no summary section (truncated or not finished)", f)
            return {
                ch.topic: (
                    summary.schemas[ch.schema_id].name if ch.schema_id in summary.schemas else ""
                )
                for ch in summary.channels.values()
            }
    except FileNotFoundError as e:
        raise MissingFileError("missing", f) from e
    except _CORRUPT as e:
        raise CorruptFileError(
            f"not a readable MCAP file ({type(e).__name__}: {_msg(e)})", f
        ) from e


def open_reader(path: Path, **options: Any) -> McapReader:
    if not (path.is_dir() or path.is_file()):
        raise EnrollError("does not exist", path)
    return McapReader(path, **options)
