"""An identity provider for tests: keys it generates, the tokens it signs and the JWKS it
serves over HTTP, so that OIDC verification is tested with real signatures."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.org/realms/radiology"
AUDIENCE = "medsearch"


class Provider:
    """An identity provider: its signing keys and the JWKS it publishes."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.published: list[dict[str, Any]] = [
            {**json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key())), "kid": "rsa-1", "use": "sig"},
            {**json.loads(ECAlgorithm.to_jwk(self.ec.public_key())), "kid": "ec-1", "use": "sig"},
        ]
        self.requests = 0

    def token(self, *, key: Any = None, kid: str = "rsa-1", algorithm: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-123", "iat": now, "exp": now + 300, **claims}
        body = {name: value for name, value in body.items() if value is not None}
        return jwt.encode(
            body, key if key is not None else self.rsa, algorithm=algorithm, headers={"kid": kid}
        )


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[Provider, str]]:
    idp = Provider()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            idp.requests += 1
            body = json.dumps({"keys": idp.published}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield idp, f"http://127.0.0.1:{server.server_address[1]}/certs"
    server.shutdown()
