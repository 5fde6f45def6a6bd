"""How much of a service one client may hold, and for how long (docs/services.md, "Limits").

Plain values (the standard library only), so that ``dataspace serve --help`` shows
them without importing the services. :mod:`dataspace.auth.connections` enforces the
connection-level ones (headers, connections), :class:`dataspace.auth.service.
SignedRequests` the body deadline.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

#: seconds a request's headers may take from the connection (or from the first byte
#: after the previous answer) to their end: our clients send them in one write, so
#: this is generous for any real link and short enough that a flood of half-sent
#: requests frees itself within seconds
HEADER_TIMEOUT_S = 10.0
#: seconds a request's body may take to arrive after its headers: 256 KiB (the largest
#: body, auth.service.MAX_BODY) at 9 KiB/s, far slower than any link a connector or
#: consumer uses; a slower body holds a task and a connection for nothing (408)
BODY_TIMEOUT_S = 30.0
#: most bytes of one request's headers: a signed request's are under 1 KiB; nginx
#: allows 32 KiB by default, h11 16 KiB; httptools has no bound of its own
MAX_HEADER_BYTES = 64 * 1024
#: most connections one service process holds at once, unless its file limit allows
#: fewer (then half of it: see :meth:`ConnectionLimits.connections`)
MAX_CONNECTIONS = 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """What one service process bounds per connection and in all.

    ``max_connections`` None: :data:`MAX_CONNECTIONS`, or half the process's soft file
    limit if that is smaller, because each connection is a descriptor and the service
    needs the other half for its own files (the log, DuckDB, the nonces) and its
    outgoing requests (witnesses, the hub): connections must run out before files do.
    """

    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_header_bytes: int = MAX_HEADER_BYTES
    max_connections: int | None = None

    def connections(self) -> int:
        """The connection limit in force for this process."""
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS
        return max(16, min(MAX_CONNECTIONS, soft // 2))


#: the limits a service runs with unless told otherwise
DEFAULT_LIMITS = ConnectionLimits()
