"""Authentication of every service request: RFC 9421 HTTP message signatures with identity keys.

Its own package (not ``dataspace.policy``) because it is transport: headers,
digests, nonce stores and ASGI middleware, used by the hub, the connector
service and every client. It depends only on ``dataspace.policy.identity``
(who a key is) and ``cryptography``; policy decides what a role may do with
data, this package only establishes who is calling.
"""
