"""Worker identity, and telling whether a worker on this host is dead.

An owner id is ``host|boot id|pid namespace|pid|process start time|nonce``.
A reused pid is not mistaken for the old process (start time differs), nor a
process in another container or after a reboot (namespace or boot id
differs): whenever the answer is not certain the owner counts as alive, and
only its lease can free its runs.
"""

from __future__ import annotations

import os
import socket
import uuid


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None if there is no such live process."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parens
    if fields[0] in ("Z", "X"):  # a zombie has already died
        return None
    return fields[19]


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def new_owner_id() -> str:
    """A fresh, unique id for one worker (one Interpreter)."""
    pid = os.getpid()
    return "|".join([
        socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), _namespace(),
        str(pid), _start_time(pid) or "", uuid.uuid4().hex[:12],
    ])


def is_dead(owner: str) -> bool:
    """True only when ``owner`` certainly was a process on this host that no longer runs."""
    parts = owner.split("|")
    if len(parts) != 6:
        return False
    _, boot, ns, pid, started, _ = parts
    if not boot or not started or boot != _read("/proc/sys/kernel/random/boot_id"):
        return False
    if not ns or ns != _namespace() or not pid.isdigit():
        return False
    return _start_time(int(pid)) != started
