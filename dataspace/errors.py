"""The root of every error this project raises on purpose.

Library code raises a subclass of :class:`DataspaceError` with a message that
names the file, the episode, the entry or the value at fault. Only the CLI
(``dataspace.cli``) and the services (``dataspace.hub``, the connector service)
turn these into messages, exit codes and HTTP status codes.
"""

from __future__ import annotations


class DataspaceError(Exception):
    """Base class: a problem the user can act on (bad input, refused request)."""

    #: process exit code the CLI uses for this kind of error
    exit_code: int = 1
    #: HTTP status the services answer with for this kind of error
    http_status: int = 400


class NotFoundError(DataspaceError):
    """A site, dataset, contract, entry or file that does not exist."""

    http_status = 404


class RefusedError(DataspaceError):
    """A request that is well formed but not allowed (policy, budget, role)."""

    exit_code = 3
    http_status = 403
