"""Helper process for the crash and concurrency tests: append in a loop, report acks.

Usage: python -m tests.audit.appender LOG KEYFILE TAG BATCH COUNT
Prints one line "INDEX ENTRY" per acknowledged entry, flushed as soon as
``append_many`` returns (the entry is durable by then).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from dataspace.audit.log import TransparencyLog


def main() -> None:
    log_dir, key_file, tag, batch, count = sys.argv[1:6]
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    log = TransparencyLog.open(log_dir, key=key)
    n = 0
    while int(count) < 0 or n < int(count):
        entries = [f'{{"tag":"{tag}","n":{n + i}}}'.encode() for i in range(int(batch))]
        idx = log.append_many(entries)
        sys.stdout.write("".join(f"{i} {e.decode()}\n" for i, e in zip(idx, entries, strict=True)))
        sys.stdout.flush()
        n += int(batch)


if __name__ == "__main__":
    main()
