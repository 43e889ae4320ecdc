"""Beside a simulation driver: when the driver is gone, kill the Ray processes it left behind.

Why a process of its own: SIGKILL cannot be caught, so a killed driver cannot stop Ray. Ray's own services
die with it (Ray starts them with PR_SET_PDEATHSIG), but raylet's helpers (the dashboard agent, the runtime
environment agent) were seen to outlive it. This script is started by the driver with a pipe on its stdin;
every second it records the driver's Ray processes (pid and start time, from /proc), and when the pipe
closes (the driver exited, however) it kills those still alive. Run with `python -I -S`: it imports nothing
but the standard library, and ignores SIGINT and SIGTERM sent to the driver's process group, so it is still
there to clean up when the driver goes.

Usage: python -I -S _ray_reaper.py DRIVER_PID
"""

import contextlib
import os
import select
import signal
import sys
import time

SEP = os.sep


def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def is_ray(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return bool(argv) and (argv[0].startswith("ray::") or any(f"{SEP}ray{SEP}" in a for a in argv[:3]))


def ray_descendants(root, me):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = stat(int(entry))
            if s is not None and s[0] != "Z":
                children.setdefault(s[1], []).append(int(entry))
    # only the Ray services the driver started and what runs under them (not another driver's Ray)
    found, todo = {}, [c for c in children.get(root, []) if c != me and is_ray(c)]
    for child in todo:
        s = stat(child)
        if s is not None:
            found[child] = s[2]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            s = stat(child)
            if s is not None and is_ray(child):
                found[child] = s[2]
    return found


def alive(pid, started):
    s = stat(pid)
    return s is not None and s[0] != "Z" and s[2] == started


def main(driver):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    me, known = os.getpid(), {}
    while True:
        known.update(ray_descendants(driver, me))
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready and not os.read(0, 4096):
            break
    # the driver is gone or done: what it started of Ray goes too (same pid *and* start time only)
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 0.0)):
        living = [p for p, t in known.items() if alive(p, t)]
        for p in living:
            with contextlib.suppress(OSError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(alive(p, t) for p, t in known.items()):
            time.sleep(0.05)


if __name__ == "__main__":
    main(int(sys.argv[1]))
