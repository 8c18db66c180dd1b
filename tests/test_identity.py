"""Dead-owner detection: certain only for processes of this host; unsure means alive."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from replaygen._identity import is_dead, new_owner_id


def _with(owner: str, **changes: str) -> str:
    host, boot, ns, pid, started, nonce = owner.split("|")
    fields = {**dict(host=host, boot=boot, ns=ns, pid=pid, started=started, nonce=nonce), **changes}
    return "|".join(fields[k] for k in ("host", "boot", "ns", "pid", "started", "nonce"))


def test_a_live_process_is_alive() -> None:
    assert not is_dead(new_owner_id())


def test_an_exited_process_is_dead() -> None:
    child = subprocess.run([sys.executable, "-c",
                            "from replaygen._identity import new_owner_id; print(new_owner_id())"],
                           capture_output=True, text=True, check=True)
    assert is_dead(child.stdout.strip())


def test_a_killed_but_unreaped_process_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    me = new_owner_id()
    owner = _with(me, pid=str(child.pid), started=open(f"/proc/{child.pid}/stat").read()
                  .rsplit(")", 1)[1].split()[19])
    assert not is_dead(owner)
    child.kill()  # a zombie until waited for: its /proc entry remains
    for _ in range(500):  # the kernel turns it into a zombie shortly after the signal
        if open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    assert is_dead(owner)
    child.wait()
    assert is_dead(owner)


def test_a_reused_pid_is_not_mistaken_for_the_old_process() -> None:
    me = new_owner_id()
    # our own pid, but a start time that is not ours: the pid was reused
    assert is_dead(_with(me, started="1"))


def test_an_owner_on_another_boot_or_host_namespace_counts_as_alive() -> None:
    me = new_owner_id()
    gone = _with(me, pid=str(2**22 + 7))  # no such pid here
    assert is_dead(gone)
    assert not is_dead(_with(gone, boot="00000000-other-boot"))  # another machine, or a reboot
    assert not is_dead(_with(gone, ns="pid:[1]"))  # another container's pid namespace
    assert not is_dead("not-an-owner-id") and not is_dead(_with(gone, started=""))
    assert os.getpid() == int(me.split("|")[3])
