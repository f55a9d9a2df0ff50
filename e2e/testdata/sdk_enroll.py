"""Enrollment as the original Mastio's Python SDK does it (wire-contract
part A), in an independent implementation: Python's `cryptography` for the
keys and signatures, the standard library for HTTP and TLS.

Usage: sdk_enroll.py <base-url> <ca-file> <identity-dir> [<guarded-path> [<mcp-tool>]]
Prints "SESSION <id>" once started, then "AGENT <agent_id>" after it used
the issued certificate on GET /v1/agents/me. With a guarded path it then
logs in as the SDK does (wire-contract part B: login-challenge,
sign-challenged-assertion, token with a fresh DPoP key and the nonce
retry) and calls the path with Authorization: DPoP and a proof, printing
"CALLED <status> <body>". With an MCP tool name it then lists the tools
of POST /v1/mcp and calls that tool with {"city": "Rome"}, as the SDK's
list_tools/call_tool do (no initialize), printing "MCP <names> <text>".
Exits non-zero on any deviation.
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
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

base, ca_file, out_dir = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca_file)
HEADERS = {"User-Agent": "python-httpx/0.23.3", "Accept": "*/*"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


last_nonce = [None]


def call(method, path, body=None, headers=None, context=ctx, raw=False):
    data = json.dumps(body).encode() if body is not None else None
    h = dict(HEADERS)
    if data is not None:
        h["Content-Type"] = "application/json"
    elif method == "POST":
        data = b""  # Content-Length: 0, no Content-Type, as httpx sends
    h.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method, headers=h)
    try:
        resp = urllib.request.urlopen(req, context=context)
        status, payload, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, payload, hdrs = e.code, e.read(), e.headers
    if hdrs.get("DPoP-Nonce"):
        last_nonce[0] = hdrs.get("DPoP-Nonce")
    if raw:
        return status, payload
    return status, json.loads(payload or b"{}")


def jws(key, header, claims):
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    r, s_ = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s_.to_bytes(32, "big"))


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

if len(sys.argv) < 5:
    sys.exit(0)
guarded = sys.argv[4]

# Part B: login with the certificate, then DPoP-bound calls.
status, ch = call("POST", "/v1/auth/login-challenge", context=mtls)
assert status == 200 and ch["agent_id"] == st["agent_id"] and ch["nonce"], (status, ch)
chain = [x509.load_pem_x509_certificate(c.encode() + b"-----END CERTIFICATE-----\n")
         for c in st["cert_pem"].split("-----END CERTIFICATE-----\n") if c.strip()]
x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
now = int(time.time())
assertion = jws(key, {"alg": "ES256", "typ": "JWT", "x5c": x5c},
                {"sub": st["agent_id"], "iss": st["agent_id"], "aud": "agent-trust-broker", "iat": now, "exp": now + 300,
                 "jti": str(uuid.uuid4()), "nonce": ch["nonce"]})
status, signed = call("POST", "/v1/auth/sign-challenged-assertion", {"client_assertion": assertion, "nonce": ch["nonce"]}, context=mtls)
assert status == 200 and signed["client_assertion"] and signed["agent_id"] == st["agent_id"], (status, signed)
assert "mastio_signature" in signed, signed

# A fresh ephemeral key for DPoP, not the enrolled one.
eph = ec.generate_private_key(ec.SECP256R1())
n = eph.public_key().public_numbers()
eph_jwk = {"crv": "P-256", "kty": "EC", "x": b64url(n.x.to_bytes(32, "big")), "y": b64url(n.y.to_bytes(32, "big"))}


def proof(method, url, access_token=None):
    claims = {"jti": str(uuid.uuid4()), "htm": method, "htu": url, "iat": int(time.time())}
    if last_nonce[0]:
        claims["nonce"] = last_nonce[0]
    if access_token:
        claims["ath"] = b64url(hashlib.sha256(access_token.encode()).digest())
    return jws(eph, {"alg": "ES256", "jwk": eph_jwk, "typ": "dpop+jwt"}, claims)


def with_nonce_retry(send):
    status, body = send()
    if status == 401 and b"use_dpop_nonce" in body:
        status, body = send()
    return status, body


status, body = with_nonce_retry(lambda: call("POST", "/v1/auth/token", {"client_assertion": signed["client_assertion"]},
                                             headers={"DPoP": proof("POST", base + "/v1/auth/token")}, context=mtls, raw=True))
assert status == 200, (status, body)
access_token = json.loads(body)["access_token"]
status, body = with_nonce_retry(lambda: call("GET", guarded, headers={
    "Authorization": "DPoP " + access_token, "DPoP": proof("GET", base + guarded, access_token)}, context=mtls, raw=True))
print("CALLED", status, body.decode().strip(), flush=True)

if len(sys.argv) > 5:
    tool = sys.argv[5]

    def mcp(msg):
        status, body = with_nonce_retry(lambda: call("POST", "/v1/mcp", msg, headers={
            "Authorization": "DPoP " + access_token, "DPoP": proof("POST", base + "/v1/mcp", access_token)},
            context=mtls, raw=True))
        assert 200 <= status < 300, (status, body)
        answer = json.loads(body)
        assert "error" not in answer, answer
        return answer["result"]

    names = sorted(t["name"] for t in mcp({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})["tools"])
    result = mcp({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {"city": "Rome"}}})
    assert result.get("isError") is not True, result
    print("MCP", ",".join(names), result["content"][0]["text"], flush=True)
