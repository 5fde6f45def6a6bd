"""Fixtures shared by every test area: where the robot data and the test vectors are.

Everything the suite needs is in the repository or made by it:

* ``tests/vectors``: the standards' own test vectors (tests/vectors/README.md);
* ``tests/data/unitree-g1-lerobot-v2.1``: a real Unitree G1 recording (MIT);
* SO-101 and bimanual stand-ins, generated once per test session by
  tests/datagen.py: the real recordings state no licence, so they are not
  shipped; the stand-ins keep their layout, columns, dimensions and counts.

``../shared`` beside the checkout (``DATASPACE_SHARED`` overrides; CI lays a
copy there) adds coverage when present: tests marked ``needs_shared`` also run
on the real SO-101 and bimanual recordings, and skip without them.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests import datagen

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
VECTORS = REPO / "tests" / "vectors"
UNITREE = DATA / "unitree-g1-lerobot-v2.1"

#: set by the first process of a test session (pytest-xdist workers inherit it), or by
#: hand to keep the stand-ins in a folder of one's choice between runs
STANDINS_ENV = "DATASPACE_TEST_STANDINS"


def _abandoned(folder: Path) -> bool:
    """True when no live session holds ``folder`` (its maker died before cleaning up)."""
    lock = folder / ".lock"
    try:
        if not lock.exists():  # being made right now, or older than locks: age decides
            return time.time() - folder.stat().st_mtime > 86400
        with lock.open("rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (BlockingIOError) or gone
        return False
    return True


def _standins_root() -> Path:
    """The session's folder of generated stand-ins.

    The process that makes it holds a lock on it while it lives and removes it
    at exit; a later session removes the folders of sessions that were killed.
    """
    if os.environ.get(STANDINS_ENV):
        return Path(os.environ[STANDINS_ENV])
    for old in Path(tempfile.gettempdir()).glob("dataspace-standins-*"):
        if _abandoned(old):
            shutil.rmtree(old, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix="dataspace-standins-"))
    lock = (root / ".lock").open("wb")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD.append(lock)
    os.environ[STANDINS_ENV] = str(root)
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


_HELD: list = []  # the open lock file of the session's folder, held until exit
GENERATED = _standins_root() / "lerobot-v3"
_STANDINS = datagen.ensure(GENERATED)
SO101 = _STANDINS[datagen.SO101_NAME]
BIMANUAL = _STANDINS[datagen.BIMANUAL_NAME]

#: the real recordings, when ../shared is there (extra coverage only)
SHARED = Path(os.environ.get("DATASPACE_SHARED", REPO.parent / "shared")).resolve()
SHARED_DATA = SHARED / "data"
REAL_SO101 = SHARED_DATA / datagen.SO101_NAME
REAL_BIMANUAL = SHARED_DATA / datagen.BIMANUAL_NAME
HAVE_SHARED = REAL_SO101.is_dir() and REAL_BIMANUAL.is_dir()
needs_shared = pytest.mark.skipif(
    not HAVE_SHARED, reason=f"real recordings not at {SHARED_DATA} (set DATASPACE_SHARED)"
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data with the real recordings; skips the test where it is absent."""
    if not HAVE_SHARED:
        pytest.skip(f"real recordings not at {SHARED_DATA} (set DATASPACE_SHARED)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"test vectors not found at {VECTORS}")
    return VECTORS
