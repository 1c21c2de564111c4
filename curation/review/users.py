"""Curator accounts for the review app: argon2id password hashes, roles curator and admin."""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select

from curation.catalog import session_scope
from curation.catalog.models import Curator
from curation.review import sessions

ROLES = ("curator", "admin")
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # hashing is the expensive part of a login: bound what it hashes
_hasher = PasswordHasher()  # argon2id with the library's current defaults
_DUMMY = _hasher.hash("not a password of anyone")  # verified against when a name is unknown (same timing)


def add_curator(db_url: str, name: str, password: str, role: str = "curator", *, replace: bool = False) -> dict:
    """Create an account (or, with ``replace``, set its password and role and re-enable it)."""
    if not NAME.match(name or ""):
        raise ValueError("a curator name is 1–100 letters, digits or . _ @ -")
    if role not in ROLES:
        raise ValueError(f"role is one of {', '.join(ROLES)}")
    if not MIN_PASSWORD <= len(password or "") <= MAX_PASSWORD:
        raise ValueError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    hashed = _hasher.hash(password)
    with session_scope(db_url) as session:
        curator = session.scalar(select(Curator).where(Curator.name == name))
        if curator is not None and not replace:
            raise ValueError(f"curator {name!r} exists (replace it to set a new password or role)")
        if curator is None:
            curator = Curator(name=name, password_hash=hashed, role=role, active=True)
            session.add(curator)
        else:
            curator.password_hash, curator.role, curator.active = hashed, role, True
    if replace:  # a new password ends every session the old one opened
        sessions.end_all(db_url, name)
    return {"name": name, "role": role, "active": True}


def authenticate(db_url: str, name: str, password: str) -> dict | None:
    """The account when the password is right and the account active, else None."""
    if len(password or "") > MAX_PASSWORD:
        return None
    with session_scope(db_url) as session:
        curator = session.scalar(select(Curator).where(Curator.name == (name or "")[:100]))
        try:
            _hasher.verify(curator.password_hash if curator else _DUMMY, password or "")
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if curator is None or not curator.active:
            return None
        if _hasher.check_needs_rehash(curator.password_hash):
            curator.password_hash = _hasher.hash(password)
        return {"name": curator.name, "role": curator.role}


def get_curator(db_url: str, name: str) -> dict | None:
    with session_scope(db_url) as session:
        curator = session.scalar(select(Curator).where(Curator.name == name))
        return None if curator is None else {"name": curator.name, "role": curator.role, "active": curator.active}


def list_curators(db_url: str) -> list[dict]:
    with session_scope(db_url) as session:
        return [{"name": c.name, "role": c.role, "active": c.active, "created_at": c.created_at.isoformat()}
                for c in session.scalars(select(Curator).order_by(Curator.name))]


def set_active(db_url: str, name: str, active: bool) -> bool:
    """Enable or disable an account; disabling ends its sessions and gives back its claims."""
    with session_scope(db_url) as session:
        curator = session.scalar(select(Curator).where(Curator.name == name))
        if curator is None:
            raise LookupError(f"no curator {name!r}")
        curator.active = active
    if not active:
        from curation.review.queue import release_all

        sessions.end_all(db_url, name)
        release_all(db_url, name)
    return active


def change_password(db_url: str, name: str, current: str, new: str) -> None:
    """A curator sets her own password (knowing the current one); every session of hers ends."""
    if authenticate(db_url, name, current) is None:
        raise ValueError("the current password is wrong")
    if current == new:
        raise ValueError("the new password is the same as the current one")
    role = get_curator(db_url, name)["role"]
    add_curator(db_url, name, new, role, replace=True)
