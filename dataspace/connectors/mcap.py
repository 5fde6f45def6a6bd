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
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from dataspace.connectors.reader import (
    ColumnError,
    CorruptFileError,
    DimensionError,
    EnrollError,
    MissingFileError,
    make_episode,
    walk_files,
)
from dataspace.schema import DatasetInfo, Episode

try:  # the chunk decompressors the mcap library uses raise their own errors
    from zstandard import ZstdError
except ImportError:  # pragma: no cover
    ZstdError = ValueError  # type: ignore[assignment,misc]

#: what a malformed file makes the mcap library raise (found by tests/assurance fuzzing)
_CORRUPT = (McapError, OSError, ValueError, EOFError, AssertionError, KeyError, struct.error,
            ZstdError)  # fmt: skip

FORMAT = "mcap"
OPTIONS = ("state_topic", "action_topic", "episode_gap", "fps")
JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"
_ACTION_TYPES = (JOINT_STATE, FLOAT64_ARRAY)


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
        self.gap_ns = round((1.0 if episode_gap is None else episode_gap) * 1e9)
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
        try:
            with f.open("rb") as fh:
                reader = make_reader(fh, decoder_factories=[DecoderFactory()])
                for _schema, channel, message, msg in reader.iter_decoded_messages(
                    topics=[self.state_topic, self.action_topic]
                ):
                    if channel.topic == self.state_topic:
                        stamp = _stamp(msg)
                        if st_t and stamp - st_t[-1] > self.gap_ns:
                            yield self._episode(f, st_t, st_v, ac_t, ac_v)
                            ac_t, ac_v = _keep_tail(ac_t, ac_v, st_t[-1])
                            st_t, st_v = [], []
                        if not self.info.state_names and msg.name:
                            self.info.state_names = [str(n) for n in msg.name]
                        st_t.append(stamp)
                        st_v.append(msg.position)
                    else:
                        if hasattr(msg, "position"):
                            ac_t.append(_stamp(msg))
                            ac_v.append(msg.position)
                            if not self.info.action_names and msg.name:
                                self.info.action_names = [str(n) for n in msg.name]
                        else:
                            ac_t.append(int(message.log_time))
                            ac_v.append(msg.data)
        except _CORRUPT as e:
            raise CorruptFileError(
                f"cannot read MCAP ({type(e).__name__}: {e})", f, self._index
            ) from e
        if st_t:
            yield self._episode(f, st_t, st_v, ac_t, ac_v)

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
        with f.open("rb") as fh:
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
        raise CorruptFileError(f"not a readable MCAP file ({type(e).__name__}: {e})", f) from e


def open_reader(path: Path, **options: Any) -> McapReader:
    if not (path.is_dir() or path.is_file()):
        raise EnrollError("does not exist", path)
    return McapReader(path, **options)
