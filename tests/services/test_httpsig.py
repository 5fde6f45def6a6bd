"""RFC 9421 signatures: what verifies, and each way a request is refused."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.auth import httpsig
from dataspace.auth.nonces import FileNonceStore, MemoryNonceStore

HOST = "svc.example:8000"


def _signed(key, method="POST", path="/v1/x", query="a=1", body=b'{"x":1}', **kw):
    return httpsig.sign_request(key, method, path, query, body, **({"authority": HOST} | kw))


def _verify(headers, method="POST", path="/v1/x", query="a=1", body=b'{"x":1}', store=None, **kw):
    h = httpx.Headers({"Host": HOST, **headers})
    return httpsig.verify_request(
        method,
        path,
        query,
        h,
        body,
        store if store is not None else MemoryNonceStore(),
        **({"authorities": {HOST}} | kw),
    )


def test_sign_verify_roundtrip_names_the_key():
    key = Ed25519PrivateKey.generate()
    v = _verify(_signed(key))
    assert v.key_id == httpsig.key_id_of(key)
    assert len(base64.b64decode(v.key_id)) == 32


def test_signature_base_is_rfc9421_shape():
    base = httpsig.signature_base("get", "hub.example", "/p", "", "sha-256=:x:", "PARAMS")
    assert base.decode().splitlines() == [
        '"@method": GET',
        '"@authority": hub.example',
        '"@path": /p',
        '"@query": ?',
        '"content-digest": sha-256=:x:',
        '"@signature-params": PARAMS',
    ]
    # RFC 9530 example digest of the empty body
    assert httpsig.content_digest(b"") == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"body": b'{"x":2}'}, httpsig.DigestMismatchError),
        ({"method": "PUT"}, httpsig.SignatureError),
        ({"path": "/v1/y"}, httpsig.SignatureError),
        ({"query": "a=2"}, httpsig.SignatureError),
    ],
)
def test_altered_request_is_refused(change, error):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(error):
        _verify(_signed(key), **change)


def test_altered_digest_header_is_refused_even_if_consistent():
    key = Ed25519PrivateKey.generate()
    h = _signed(key)
    h["Content-Digest"] = httpsig.content_digest(b'{"x":2}')
    with pytest.raises(httpsig.SignatureError, match="does not verify"):
        _verify(h, body=b'{"x":2}')


def test_replay_refused_and_stale_refused():
    key = Ed25519PrivateKey.generate()
    store = MemoryNonceStore()
    h = _signed(key)
    _verify(h, store=store)
    with pytest.raises(httpsig.ReplayedRequestError, match="replay"):
        _verify(h, store=store)
    old = _signed(key, created=int(time.time()) - 301)
    with pytest.raises(httpsig.StaleRequestError, match="window"):
        _verify(old)
    future = _signed(key, created=int(time.time()) + 301)
    with pytest.raises(httpsig.StaleRequestError):
        _verify(future)


def test_forged_signature_does_not_burn_the_nonce():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    store = MemoryNonceStore()
    h = _signed(key, nonce="n" * 20)
    forged = dict(h)
    forged["Signature"] = _signed(other, nonce="n" * 20)["Signature"]
    with pytest.raises(httpsig.SignatureError):
        _verify(forged, store=store)
    _verify(h, store=store)  # the real request still passes


@pytest.mark.parametrize(
    ("header", "value", "match"),
    [
        ("Signature-Input", "sig1=();created=1", "must cover exactly"),
        ("Signature-Input", "garbage", "is not label"),
        ("Signature", "sig1=:not base64!:", "is not label"),
        ("Signature-Input", None, "no signature-input"),
        ("Content-Digest", None, "no content-digest"),
    ],
)
def test_malformed_headers_are_refused(header, value, match):
    key = Ed25519PrivateKey.generate()
    h = _signed(key)
    if value is None:
        del h[header]
    else:
        h[header] = value
    with pytest.raises(httpsig.SignatureError, match=match):
        _verify(h)


def test_file_nonce_store_survives_restart(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    h = _signed(key)
    _verify(h, store=FileNonceStore(tmp_path / "nonces"))
    with pytest.raises(httpsig.ReplayedRequestError):
        _verify(h, store=FileNonceStore(tmp_path / "nonces"))


def test_httpx_auth_signs_what_is_sent():
    key = Ed25519PrivateKey.generate()
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        path, _, query = request.url.raw_path.decode().partition("?")
        seen["v"] = httpsig.verify_request(
            request.method,
            path,
            query,
            request.headers,
            request.content,
            MemoryNonceStore(),
            authorities={"x"},
        )
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler), auth=httpsig.HttpSigAuth(key)) as c:
        c.post("http://x/v1/a%20b?q=robot arm", json={"k": "v"})
    assert seen["v"].key_id == httpsig.key_id_of(key)


def test_a_signature_is_bound_to_the_service_it_names():
    """@authority is signed: another Host, or a service that is not the one named, refuses."""
    key = Ed25519PrivateKey.generate()
    h = _signed(key)
    with pytest.raises(httpsig.MisdirectedRequestError):
        _verify(h, authorities={"other.example:8000"})
    with pytest.raises(httpsig.SignatureError, match="does not verify"):
        _verify(h | {"Host": "other.example:8000"}, authorities={"other.example:8000"})
    # the default port of the scheme and the case of the host do not matter
    assert httpsig.normalize_authority("Hub.Example:80") == "hub.example"
    assert httpsig.normalize_authority("hub.example:443", "https") == "hub.example"
    assert httpsig.normalize_authority("hub.example:80", "https") == "hub.example:80"
    v = _verify(_signed(key, authority="SVC.example:8000"))
    assert v.key_id == httpsig.key_id_of(key)


def test_a_signature_without_authority_is_refused_with_its_own_code():
    key = Ed25519PrivateKey.generate()
    h = _signed(key)
    h["Signature-Input"] = h["Signature-Input"].replace('"@authority" ', "")
    with pytest.raises(httpsig.UnboundSignatureError, match="@authority") as e:
        _verify(h)
    assert e.value.code == "unbound_signature" and e.value.http_status == 401
