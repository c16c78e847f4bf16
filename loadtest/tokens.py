#!/usr/bin/env python3
"""Mints HS256 tokens, each for a new user, as Turnout accepts them: one
per line on stdout. For the shell scripts here that drive the server with
wrk or curl; the load tool mints its own.

    loadtest/tokens.py KEY [COUNT] > tokens
"""
import base64, hashlib, hmac, json, sys, time, uuid

key, count = sys.argv[1].encode(), int(sys.argv[2]) if len(sys.argv) > 2 else 1
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
out = sys.stdout
for _ in range(count):
    body = b64(json.dumps({"sub": str(uuid.uuid4()), "iat": now, "exp": now + 3600, "iss": "turnout"}).encode())
    signing = head + b"." + body
    out.write((signing + b"." + b64(hmac.new(key, signing, hashlib.sha256).digest())).decode() + "\n")
