"""Docker's USER resolved in a root filesystem: `name|uid[:group|gid]` against its /etc/passwd and
/etc/group, with the rules of runc's user lookup (what `docker run --user` and BuildKit do):

- a name must be in passwd; a number need not be (then the primary gid is 0);
- a matched user brings its passwd gid and home, and, when no group is given, the supplementary
  groups that list the user as a member;
- a group name must be in /etc/group; a number need not be; an explicit group means no
  supplementary groups.

The files are read through openat2(RESOLVE_IN_ROOT), so a hostile image's symlinks cannot lead out
of its root, and only as regular files of bounded size (no FIFO or device can block the reader).
Used by the sandbox's child (cheap imports only) and by the executor for `COPY --chown`.
"""

from __future__ import annotations

import os

from buildpy.sandbox import syscalls

MAX_ID = 2**31 - 1
_MAX_FILE = 16 << 20


class UserError(Exception):
    """USER names something the image does not have: the user's mistake, shown as one line."""

    user_facing = True


class ExecUser:
    """Who the step's process runs as."""

    __slots__ = ("uid", "gid", "groups", "home")

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...] = (), home: str = "/") -> None:
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home

    def __repr__(self) -> str:
        return f"ExecUser(uid={self.uid}, gid={self.gid}, groups={self.groups}, home={self.home!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExecUser) and (self.uid, self.gid, self.groups, self.home) == (
            other.uid, other.gid, other.groups, other.home)


def read_in_root(root: str, path: str) -> str | None:
    """The text of the regular file `path` inside `root` (symlinks resolved as if `root` were /),
    or None when it does not exist."""
    try:
        rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fd = syscalls.openat2(rootfd, path.lstrip("/"), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY,
                                  syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.fstat(fd)
            if (st.st_mode & 0o170000) != 0o100000:  # not S_IFREG
                raise UserError(f"{path} in the image is not a regular file")
            chunks = []
            total = 0
            while chunk := os.read(fd, 1 << 16):
                total += len(chunk)
                if total > _MAX_FILE:
                    raise UserError(f"{path} in the image is larger than {_MAX_FILE >> 20} MiB")
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "surrogateescape")
        finally:
            os.close(fd)
    finally:
        os.close(rootfd)


def _numeric(text: str) -> int | None:
    if not text.isdigit() or not text.isascii():
        return None
    value = int(text)
    if value > MAX_ID:
        raise UserError(f"uids and gids must be in range 0-{MAX_ID}: {text}")
    return value


def _entries(text: str | None, fields: int) -> list[list[str]]:
    """Lines of a colon-separated file with at least `fields` fields; others are skipped."""
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            out.append(parts)
    return out


def _passwd(text: str | None) -> list[tuple[str, int, int, str]]:
    users = []
    for parts in _entries(text, 4):
        uid, gid = _numeric(parts[2]), _numeric(parts[3])
        if uid is not None and gid is not None:
            users.append((parts[0], uid, gid, parts[5] if len(parts) > 5 else ""))
    return users


def _group(text: str | None) -> list[tuple[str, int, list[str]]]:
    groups = []
    for parts in _entries(text, 3):
        gid = _numeric(parts[2])
        if gid is not None:
            members = [m.strip() for m in parts[3].split(",") if m.strip()] if len(parts) > 3 else []
            groups.append((parts[0], gid, members))
    return groups


def resolve(user: str, passwd: str | None, group: str | None) -> ExecUser:
    """`user` ("" is root) resolved against the texts of /etc/passwd and /etc/group (None: absent)."""
    name, _, group_arg = user.partition(":")
    uid_arg = _numeric(name) if name else 0
    gid_arg = _numeric(group_arg) if group_arg else None
    result = ExecUser(0, 0, (), "/")
    matched = ""
    for entry_name, uid, gid, home in _passwd(passwd):
        if (uid == uid_arg) if uid_arg is not None else (entry_name == name):
            matched = entry_name
            result = ExecUser(uid, gid, (), home or "/")
            break
    else:
        if uid_arg is None:
            raise UserError(f"unable to find user {name}: no matching entries in passwd file")
        result.uid = uid_arg
    if group_arg:
        for entry_name, gid, _members in _group(group):
            if (gid == gid_arg) if gid_arg is not None else (entry_name == group_arg):
                result.gid = gid
                break
        else:
            if gid_arg is None:
                raise UserError(f"unable to find group {group_arg}: no matching entries in group file")
            result.gid = gid_arg
    elif matched:
        result.groups = tuple(gid for _name, gid, members in _group(group) if matched in members)
    return result


def lookup(root: str, user: str) -> ExecUser:
    """`user` resolved in the root filesystem at `root` (a host path, or "/" inside the sandbox)."""
    return resolve(user, read_in_root(root, "etc/passwd"), read_in_root(root, "etc/group"))
