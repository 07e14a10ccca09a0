#!/usr/bin/env python3
"""deploy/k8s/make-secrets.py - makes the Secrets' files every overlay's kustomization.yaml reads.

For each overlay (overlays/<dc>/ with a kustomization.yaml) it writes, into overlays/<dc>/secrets/
(mode 0700, ignored by git), whatever is missing:
  bus_curve.key   the data center's bus CURVE key (Meerkat key file: a comment, the Z85 secret)
  gd_curve.key    its gd link CURVE key
  tls.crt/.key    a self-signed ECDSA certificate for --domain (replace it with a real one)
  pg-password     the PostgreSQL password, the same for every data center (they share the database)
and writes each data center's gd public key (not a secret) into the gd.peers entry of the other
overlays' meerkat.yaml. Existing files are kept (--force makes new ones).

  python3 deploy/k8s/make-secrets.py [--dir deploy/k8s] [--domain example.org] [--force]
Needs python3-cryptography and openssl."""
import argparse
import os
import re
import secrets as rnd
import subprocess
import sys

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def z85_encode(data):
    out = []
    for i in range(0, len(data), 4):
        v = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            chunk.append(_Z85[v % 85])
            v //= 85
        out.extend(reversed(chunk))
    return "".join(out)


def z85_decode(text):
    out = bytearray()
    for i in range(0, len(text), 5):
        v = 0
        for ch in text[i:i + 5]:
            v = v * 85 + _Z85.index(ch)
        out += v.to_bytes(4, "big")
    return bytes(out)


def public_of(secret_z85):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    k = X25519PrivateKey.from_private_bytes(z85_decode(secret_z85))
    raw = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return z85_encode(raw)


def new_secret():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives import serialization
    k = X25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    return z85_encode(raw)


def read_key(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                return line
    raise SystemExit(f"make-secrets: {path} holds no key")


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def key_file(path, what, force):
    if force or not os.path.exists(path):
        write_private(path, f"# meerkat CURVE secret key: {what} (deploy/k8s/make-secrets.py)\n{new_secret()}\n")
        print(f"make-secrets: wrote {path}")
    return public_of(read_key(path))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--domain", default="example.org")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    root = os.path.join(a.dir, "overlays")
    dcs = sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "kustomization.yaml")))
    if not dcs:
        sys.exit(f"make-secrets: no overlay under {root}")
    pg = None
    for dc in dcs:
        p = os.path.join(root, dc, "secrets", "pg-password")
        if os.path.exists(p) and not a.force:
            with open(p) as f:
                pg = f.read().strip()
            break
    pg = pg or rnd.token_urlsafe(24)
    pubs = {}
    for dc in dcs:
        sd = os.path.join(root, dc, "secrets")
        os.makedirs(sd, mode=0o700, exist_ok=True)
        os.chmod(sd, 0o700)
        key_file(os.path.join(sd, "bus_curve.key"), f"{dc} bus", a.force)
        pubs[dc] = key_file(os.path.join(sd, "gd_curve.key"), f"{dc} gd link", a.force)
        p = os.path.join(sd, "pg-password")
        if a.force or not os.path.exists(p):
            write_private(p, pg + "\n")
        crt, key = os.path.join(sd, "tls.crt"), os.path.join(sd, "tls.key")
        if a.force or not (os.path.exists(crt) and os.path.exists(key)):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-days", "825", "-subj", f"/CN={a.domain}",
                            "-addext", f"subjectAltName=DNS:{a.domain}", "-keyout", key, "-out", crt],
                           check=True, capture_output=True)
            os.chmod(key, 0o600)
            print(f"make-secrets: wrote {crt} (self-signed for {a.domain})")
    for dc in dcs:
        cfg = os.path.join(root, dc, "meerkat.yaml")
        with open(cfg) as f:
            text = f.read()
        new = text
        for other, pub in pubs.items():
            if other != dc:
                new = re.sub(r'(- dc: %s\n\s+public_key: )"[^"]*"' % re.escape(other),
                             lambda m: m.group(1) + '"' + pub + '"', new)
        if new != text:
            with open(cfg, "w") as f:
                f.write(new)
            print(f"make-secrets: {cfg}: gd.peers public keys updated")


if __name__ == "__main__":
    main()
