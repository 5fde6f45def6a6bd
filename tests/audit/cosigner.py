"""Helper process for the witnessing crash test: append and get cosigned in a loop.

Usage: python -m tests.audit.cosigner LOG KEYFILE WITNESS_DIR WITNESS_KEYFILE
Prints "SIZE" once the witness's cosignature of the checkpoint of that size is
kept (``TransparencyLog.keep_cosignature`` returned), flushed at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from dataspace.audit.cosignature import witness_verifier
from dataspace.audit.log import TransparencyLog
from dataspace.audit.witness import Witness, WitnessError
from dataspace.audit.witnessing import Peer, witness_once


def main() -> None:
    log_dir, key_file, w_dir, w_key_file = sys.argv[1:5]
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    w_key = serialization.load_pem_private_key(Path(w_key_file).read_bytes(), None)
    log = TransparencyLog.open(log_dir, key=key)
    w = Witness(w_dir, "w1", w_key, [log.verifier])
    peer = Peer("local", witness_verifier("w1", w.signer.public_key))

    def post(url: str, body: bytes) -> tuple[int, bytes, str]:
        try:
            return 200, w.add_checkpoint(body), "text/plain"
        except WitnessError as e:
            return e.status, e.body or str(e).encode(), "text/x.tlog.size"

    known = None
    n = 0
    while True:
        log.append(b'{"n":%d}' % n)
        n += 1
        c = witness_once(log, peer, known_size=known, post=post)
        known = c.size
        sys.stdout.write(f"{c.size}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
