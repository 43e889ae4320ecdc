"""The hospital's ClientApp fork server: imports Flower and the heavy libraries once, then forks one
`flwr-clientapp` per message.

Why: Flower 1.41's `flwr-clientapp` runs exactly one task (it pulls one message with its token, runs the
ClientApp, pushes the reply and exits), and its SuperExec starts a new one for every message; each new
interpreter imports flwr, torch and Opacus again, several seconds per message on a 2-core host, five
messages per SecAgg+ round. A forked child starts with those modules already imported, and is still a new
process per message: nothing the ClientApp computed for one message is there for the next.

This file is run as a script (`python -P clientapp_zygote.py [LABEL ...] --preload JSON_LIST`) by
`fedhealth/deployment/superexec.py`, never imported: it must not import fedhealth (nor `clients`,
`server`), because the app code that runs must be the FAB's, which Flower puts first on `sys.path` when
it loads the ClientApp; a fedhealth module already in `sys.modules` would shadow the FAB's. It refuses to
serve if any preload brought one in. Only the standard library is imported here by name. The LABEL words
are ignored: they put `flwr-clientapp --runtime-api-address HOST:PORT` on its command line (and its
children's), which is how `fedhealth.deployment.processes.kill_tree` finds a node's processes.

Protocol: one JSON line per message on stdin, `{"argv": [...flwr-clientapp arguments...], "quiet": bool}`;
end of input (its SuperExec gone) ends the server. Each child runs Flower's own `flwr-clientapp` entry
point with those arguments (the token travels in the pipe, not on a command line), then exits with its
exit code. Children are reaped here; their output is the server's (the SuperNode's log).
"""

import importlib
import json
import os
import signal
import sys
import threading
import traceback

APP_PACKAGES = ("fedhealth", "clients", "server")  # the FAB's top-level packages: never preloaded


def _log(text: str) -> None:
    print(f"fedhealth clientapp fork server (pid {os.getpid()}): {text}", file=sys.stderr, flush=True)


def _reap(_signum: int, _frame: object) -> None:
    """Collect every finished child, so none is left a zombie."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _reseed() -> None:
    """Give the child fresh random states, as a new interpreter has: torch and numpy seed their global
    generators from OS entropy when imported, so without this every child would replay the server's.
    (Python's `random` reseeds itself after a fork; OpenSSL, behind `cryptography`, does too.)"""
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()


def _child(request: dict) -> None:
    """Run one `flwr-clientapp` in this forked process and exit; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        if request.get("quiet"):
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        _reseed()
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        sys.argv = ["flwr-clientapp", *request["argv"]]
        try:
            flwr_clientapp()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must exit here whatever happened
        traceback.print_exc()
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> int:
    args = sys.argv[1:]
    preload = json.loads(args[args.index("--preload") + 1]) if "--preload" in args else []
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError as err:
            _log(f"not preloaded: {name} ({err.__class__.__name__}); its children import it themselves")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in APP_PACKAGES)
    if leaked:
        _log(f"refusing to serve: preloading brought in app modules {leaked[:5]}; the FAB's code would be "
             "shadowed. Remove the module that imports them from the preload list")
        return 1
    threads = threading.active_count()
    if threads > 1:
        _log(f"{threads} threads after preloading; a fork copies only the calling one")
    signal.signal(signal.SIGCHLD, _reap)
    _log(f"ready ({len(preload)} modules preloaded)")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request.get("argv"), list):
                raise ValueError("argv missing")
        except (ValueError, AttributeError) as err:
            _log(f"ignored a malformed request ({err.__class__.__name__})")
            continue
        pid = os.fork()
        if pid == 0:
            _child(request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
