"""Who is calling, and what every service does alike: the transport layer of the data space.

Its own package (not ``dataspace.policy``) because it is transport: headers,
digests, nonce stores and ASGI middleware, used by the hub, the connector
service and every client. Policy decides what a role may do with data; this
package only establishes who is calling. The modules:

* :mod:`dataspace.auth.httpsig`: RFC 9421 HTTP message signatures with identity keys;
* :mod:`dataspace.auth.nonces`: the replay guard's nonce stores;
* :mod:`dataspace.auth.service`: the one front door of both services' shared
  setup (``service_app``: signatures, limits, the one error shape, refusals);
* :mod:`dataspace.auth.client`: signed clients, and services' errors as typed exceptions;
* :mod:`dataspace.auth.limits` and :mod:`dataspace.auth.connections`: what one client may
  hold of a service (header and body deadlines, connections), around uvicorn.

Of our own modules it imports only ``errors`` and ``site.identity`` (who a key
is); besides, cryptography, httpx, FastAPI and uvicorn.
"""
