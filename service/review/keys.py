"""Reviewer keys: each reviewer has their own random key, and the reviewers file keeps only a salted
hash of it, so the file does not hand out the keys to whoever reads it.

A line is `name:role:sha256$<salt hex>$<digest hex>`, role `reviewer` or `reviser` (may revise an
answered product). The keys are 32 random bytes (`secrets.token_urlsafe(32)`), far past guessing, so a
salted SHA-256 is enough: a slow password hash protects low-entropy secrets, and would make every
unknown key cost a slow hash per reviewer. `add_reviewer` writes a line and returns the key, which is
shown once and never stored."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

NAME = re.compile(r"^[\w .@'-]{1,64}$")
ROLES = ("reviewer", "reviser")
LINE = re.compile(r"^(?P<name>[^:]+):(?P<role>\w+):sha256\$(?P<salt>[0-9a-f]{32})\$(?P<digest>[0-9a-f]{64})$")


@dataclass(frozen=True)
class Reviewer:
    name: str
    role: str
    salt: bytes
    digest: bytes

    @property
    def can_revise(self) -> bool:
        return self.role == "reviser"


def _digest(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode()).digest()


def read_reviewers(path: str | Path) -> list[Reviewer]:
    """The reviewers file; a plain-text key (the old `name:key` lines) is refused, naming the line."""
    out: list[Reviewer] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m or not NAME.match(m["name"]) or m["role"] not in ROLES:
            raise ValueError(f"{path}:{n}: not a reviewer line (name:role:sha256$salt$digest); keys are never stored "
                             "in plain text: add reviewers with `attrx review-keys add NAME --reviewers FILE`")
        if any(r.name == m["name"] for r in out):
            raise ValueError(f"{path}:{n}: reviewer {m['name']!r} is listed twice")
        out.append(Reviewer(m["name"], m["role"], bytes.fromhex(m["salt"]), bytes.fromhex(m["digest"])))
    if not out:
        raise ValueError(f"{path}: no reviewer: add one with `attrx review-keys add NAME --reviewers {path}`")
    return out


def find(reviewers: list[Reviewer], key: str) -> Reviewer | None:
    """The reviewer whose key this is (every line compared, in constant time each), or None."""
    found = None
    for r in reviewers:
        if hmac.compare_digest(_digest(r.salt, key), r.digest):
            found = r
    return found


def add_reviewer(path: str | Path, name: str, role: str = "reviewer") -> str:
    """Append a reviewer to the file (made 0600 if new) and return their new key."""
    if not NAME.match(name) or ":" in name:
        raise ValueError(f"reviewer name {name!r}: 1-64 letters, digits, spaces, . @ ' -")
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    path = Path(path)
    if path.exists() and any(r.name == name for r in read_reviewers(path)):
        raise ValueError(f"{path}: reviewer {name!r} is already there")
    key, salt = secrets.token_urlsafe(32), secrets.token_bytes(16)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"{name}:{role}:sha256${salt.hex()}${_digest(salt, key).hex()}\n")
        f.flush()
        os.fsync(f.fileno())
    return key
