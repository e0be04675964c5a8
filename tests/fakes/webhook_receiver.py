"""A tenant's webhook receiver on loopback, as a tenant would write one: it verifies every
delivery's signature (Stripe's scheme: `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`) with the
secret it was given, deduplicates on the event's id, and can be told to fail the first N
attempts of each event or to answer with a redirect."""

import hashlib
import hmac
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def signature_valid(header: str, body: bytes, secret: str, *, tolerance: int = 300) -> bool:
    """The check the portal shows a receiver: a fresh timestamp and one matching v1."""
    parts = [item.split("=", 1) for item in header.split(",") if "=" in item]
    stamps = [value for key, value in parts if key == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    if abs(time.time() - int(stamps[0])) > tolerance:
        return False
    expected = hmac.new(secret.encode(), stamps[0].encode() + b"." + body, hashlib.sha256)
    return any(
        hmac.compare_digest(expected.hexdigest(), value) for key, value in parts if key == "v1"
    )


@dataclass
class Arrival:
    path: str
    at: float
    event_id: str
    event: dict
    signed: bool
    status: int


@dataclass
class Receiver:
    secret: str = ""
    fail_first: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    accepted: dict[str, dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def reset(self, *, secret: str = "", fail_first: int = 0) -> None:
        with self.lock:
            self.secret, self.fail_first = secret, fail_first
            self.arrivals.clear()
            self.accepted.clear()

    def _answer(self, path: str, headers, body: bytes) -> tuple[int, dict]:
        event = json.loads(body or b"{}")
        signed = signature_valid(headers.get("X-Platform-Signature", ""), body, self.secret)
        with self.lock:
            seen = sum(1 for a in self.arrivals if a.event_id == event.get("id"))
            if path == "/redirect":
                status = 302
            elif not signed:
                status = 400
            elif seen < self.fail_first:
                status = 500
            else:
                status = 200
                self.accepted.setdefault(event["id"], event)  # a repeat changes nothing
            self.arrivals.append(Arrival(path, time.time(), event.get("id", ""), event, signed,
                                         status))  # fmt: skip
        return status, {"Location": f"{self.url}/hook"} if status == 302 else {}


def start_receiver(tls: ssl.SSLContext | None = None) -> tuple[Receiver, ThreadingHTTPServer]:
    """A receiver on 127.0.0.1 (over TLS with `tls`, then reached as https://localhost)."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, extra = receiver._answer(self.path, self.headers, body)
            reply = b"accepted" if status == 200 else b"not this time " + b"x" * 1000
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    receiver.url = f"http://127.0.0.1:{port}"
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        receiver.url = f"https://localhost:{port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


def localhost_certificate(folder) -> tuple[ssl.SSLContext, str]:
    """A server context with a self-signed certificate for the name `localhost` only (not its
    address), and the path of that certificate as a CA bundle for the client."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)
