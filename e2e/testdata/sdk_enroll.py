"""Enrollment as the original Mastio's Python SDK does it (wire-contract
part A), in an independent implementation: Python's `cryptography` for the
keys and signatures, the standard library for HTTP and TLS.

Usage: sdk_enroll.py <base-url> <ca-file> <identity-dir>
Prints "SESSION <id>" once started, then "AGENT <agent_id>" after it used
the issued certificate on GET /v1/agents/me. Exits non-zero on any
deviation from the contract.
"""
import base64
import hashlib
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

base, ca_file, out_dir = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca_file)
HEADERS = {"User-Agent": "python-httpx/0.23.3", "Accept": "*/*"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def call(method, path, body=None, headers=None, context=ctx):
    data = json.dumps(body).encode() if body is not None else None
    h = dict(HEADERS)
    if data is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, context=context) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


key = ec.generate_private_key(ec.SECP256R1())
spki_der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
pubkey_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
pop_msg = ("enrollment-pop:v1|" + hashlib.sha256(spki_der).hexdigest()).encode()
pop_signature = b64url(key.sign(pop_msg, ec.ECDSA(hashes.SHA256())))  # DER

dpop = ec.generate_private_key(ec.SECP256R1())
nums = dpop.public_key().public_numbers()
dpop_jwk = {"kty": "EC", "crv": "P-256", "x": b64url(nums.x.to_bytes(32, "big")), "y": b64url(nums.y.to_bytes(32, "big"))}

status, start = call("POST", "/v1/enrollment/start", {
    "pubkey_pem": pubkey_pem,
    "requester_name": "SDK Tester",
    "requester_email": "sdk@orga.example",
    "reason": "wire contract check",
    "device_info": json.dumps({"os": "linux", "sdk": "python"}),
    "dpop_jwk": dpop_jwk,
    "pop_signature": pop_signature,
})
assert status == 201, (status, start)
for field in ("session_id", "enroll_url", "poll_interval_s", "expires_at"):
    assert field in start, (field, start)
assert start["status"] == "pending" and isinstance(start["poll_interval_s"], int), start
sid = start["session_id"]
print("SESSION", sid, flush=True)

proof = b64url(key.sign(("enrollment-status:v1|" + sid).encode(), ec.ECDSA(hashes.SHA256())))
deadline = time.time() + 60
while True:
    status, st = call("GET", "/v1/enrollment/%s/status" % sid, headers={"X-Enrollment-Proof": proof})
    assert status == 200, (status, st)
    if st["status"] == "approved":
        break
    assert st["status"] == "pending", st
    assert time.time() < deadline, "not approved in time"
    time.sleep(start["poll_interval_s"])

assert st["agent_id"] and "::" in st["agent_id"], st
assert st["cert_pem"].count("BEGIN CERTIFICATE") == 2, "cert_pem must be leaf + intermediate"
ident = os.path.join(out_dir, "identity")
os.makedirs(ident, mode=0o700, exist_ok=True)
with open(os.path.join(ident, "agent.crt"), "w") as f:
    f.write(st["cert_pem"])
key_path = os.path.join(ident, "agent.key")
fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
with os.fdopen(fd, "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
with open(os.path.join(ident, "metadata.json"), "w") as f:
    json.dump({"agent_id": st["agent_id"], "capabilities": st["capabilities"], "site_url": base}, f)

# The SDK presents agent.crt (leaf + intermediate) on every request from now on.
mtls = ssl.create_default_context(cafile=ca_file)
mtls.load_cert_chain(os.path.join(ident, "agent.crt"), key_path)
status, me = call("GET", "/v1/agents/me", context=mtls)
assert status == 200 and me["agent_id"] == st["agent_id"], (status, me)
print("AGENT", me["agent_id"], flush=True)
