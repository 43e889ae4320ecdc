"""The deployment images, built from this checkout and run: a three-hospital study through them.

`scripts/build_images.sh` builds fedhealth-server and fedhealth-hospital (docker, podman or buildah, whichever
works here; with no registry, on a Debian base it makes with debootstrap, and torch from the local wheel
directory). Then `ContainerHost` starts the registry, gateway and SuperLink from the server image and one
SuperNode per hospital from the hospital image, each with only its own mounts, and submits the heart-disease
study from the server image. The checks: the study completes; each hospital's audit log verifies and its
ledger holds the round's charge within its policy's cap; inside a hospital's container the process is uid
10001 and its data mount refuses writes; the images carry no package manager, pip, compiler or downloader,
and turn telemetry off. Skipped, with the reason, where no engine is installed or not as root (buildah's chroot
isolation needs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fedhealth.deployment import containers
from fedhealth.deployment.demo import HOSPITALS, PROJECT, demo, lay_out_compose, rounds_of, state_of
from fedhealth.privacy.audit import verify_audit_log

pytestmark = [pytest.mark.slow, pytest.mark.containers]

ABSENT_TOOLS = ("pip", "pip3", "apt-get", "apt", "dpkg", "su", "curl", "wget", "gcc", "cc", "make", "ssh")


def _why_not() -> str | None:
    if not any(shutil.which(e) for e in ("docker", "podman", "buildah")):
        return "neither docker, podman nor buildah is installed (scripts/setup.sh --test installs buildah)"
    if os.geteuid() != 0:
        return ("run as root: the demo folders are handed to the images' uid 10001 and the Debian base is made "
                "with debootstrap")
    return None


@pytest.fixture(scope="module")
def built() -> dict:
    why = _why_not()
    if why:
        pytest.skip(why)
    done = subprocess.run(["bash", "scripts/build_images.sh"], cwd=PROJECT, capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(figures))
    return figures


@pytest.fixture(scope="module")
def engine(built) -> containers.Engine:
    found = containers.engine_that_runs()
    assert found is not None
    return found


def _inside(engine: containers.Engine, image: str, script: str, mounts=()) -> str:
    done = containers.Containers(engine)
    try:
        result = done.run(image, list(mounts), {}, ["/opt/venv/bin/python", "-c", script], timeout=120)
    finally:
        done.remove_all()
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_both_images_build_and_say_their_size(built):
    for image in (containers.SERVER_IMAGE, containers.HOSPITAL_IMAGE):
        figures = built["images"][image]
        assert figures["mb"] > 100 and figures["build_s"] > 0, figures


@pytest.mark.parametrize("image", [containers.SERVER_IMAGE, containers.HOSPITAL_IMAGE])
def test_an_image_runs_as_non_root_without_tools_it_does_not_need(engine, image):
    script = (
        "import json, os, shutil, sys; import flwr, torch, opacus, fedhealth\n"
        f"print(json.dumps({{'uid': os.getuid(), 'present': [t for t in {ABSENT_TOOLS!r} if shutil.which(t)],"
        " 'telemetry': os.environ.get('FLWR_TELEMETRY_ENABLED'), 'torch': torch.__version__,"
        " 'cuda': torch.version.cuda, 'ray': __import__('importlib.util').util.find_spec('ray') is not None,"
        " 'setuid': [os.path.join(d, f) for top in ('/usr', '/bin', '/sbin', '/opt', '/etc', '/var')"
        "            for d, _, fs in os.walk(top) for f in fs"
        "            if not os.path.islink(os.path.join(d, f)) and os.stat(os.path.join(d, f)).st_mode & 0o6000],"
        " 'code_writable': [os.path.join(d, f) for top in ('/opt/fedhealth', '/opt/venv')"
        "                   for d, _, fs in os.walk(top) for f in [*fs, '.']"
        "                   if os.access(os.path.join(d, f), os.W_OK)],"
        " 'safe_path': sys.flags.safe_path}))")
    seen = json.loads(_inside(engine, image, script).strip().splitlines()[-1])
    assert seen["uid"] == containers.UID
    assert seen["present"] == []
    assert seen["telemetry"] == "0"
    assert seen["torch"].startswith("2.13.0") and seen["cuda"] is None  # the CPU build
    assert seen["ray"] is False  # the simulation engine is not in a deployment image
    assert seen["setuid"] == []  # nothing in the image can gain privileges
    assert seen["code_writable"] == []  # the service account cannot change the code that runs next
    assert seen["safe_path"]  # no working directory on sys.path: the state volume cannot shadow the code


@pytest.fixture(scope="module")
def study(engine, tmp_path_factory) -> tuple[containers.ContainerHost, dict]:
    host = containers.ContainerHost(tmp_path_factory.mktemp("images") / "demo", engine)
    host.prepare()
    try:
        result = demo(host, rounds=1)
        yield host, result
    finally:
        host.stop_all()


def test_a_hospitals_data_mount_is_read_only_to_its_process_and_its_state_is_writable(engine, study):
    host, _ = study
    name = next(iter(HOSPITALS))
    script = (
        "import errno, json, os\n"
        "def refused(path):\n"
        "    try:\n"
        "        open(path, 'a').close()\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "    return None\n"
        "def read_only(path):\n"
        "    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)\n"
        "os.makedirs('/var/lib/fedhealth/probe', exist_ok=True); os.rmdir('/var/lib/fedhealth/probe')\n"
        "paths = ['/data/data.csv', '/data/schema.toml', '/etc/fedhealth/policy.toml', '/etc/fedhealth/ca.crt',"
        " '/etc/fedhealth/key/supernode_auth']\n"
        "print(json.dumps({'uid': os.getuid(), 'read_only': {p: read_only(p) for p in paths},"
        " 'write': {p: refused(p) for p in paths}, 'state_read_only': read_only('/var/lib/fedhealth'),"
        " 'readable': len(open('/data/data.csv').readline()) > 0,"
        " 'keys': sorted(os.listdir('/etc/fedhealth/key'))}))")
    seen = json.loads(_inside(engine, containers.HOSPITAL_IMAGE, script, host.hospital_mounts(name)).splitlines()[-1])
    assert seen["uid"] == containers.UID and seen["readable"]
    assert all(seen["read_only"].values()), seen  # mounted read-only: no write reaches the host's file
    assert all(code in ("EROFS", "EACCES") for code in seen["write"].values()), seen
    assert seen["state_read_only"] is False  # the ledger and audit volume is the one writable place
    assert seen["keys"] == sorted(containers.HOSPITAL_KEY_FILES)  # app_approval never enters the container
    assert (host.site(name) / "keys" / "app_approval").is_file()


def test_the_heart_disease_study_finishes_through_the_images(study):
    host, result = study
    print(json.dumps({k: result[k] for k in ("seconds", "state", "rounds")}))
    out = host.server_state / "runs" / "demo"
    assert state_of(out) == "completed", host.services["superlink"].output()[-3000:]
    assert [r["status"] for r in rounds_of(out)] == ["aggregated"]
    assert len(rounds_of(out)[0]["hospitals_aggregated"]) == len(HOSPITALS)
    for name in HOSPITALS:
        audit = result["audit"][name]
        assert audit["ok"] and audit["entries"] >= 1, (name, audit)
        cap = tomllib.loads((host.site(name) / "policy.toml").read_text())["max_epsilon"]
        ledger = result["ledger"][name]  # (round, epsilon) entries from the hospital's own volume
        assert len(ledger) == 1 and 0 < ledger[0][1] <= cap, (name, ledger, cap)


def test_nothing_a_container_started_outlives_the_study(study):
    host, _ = study
    names = list(host.containers.names)
    assert len(set(names) & set(host.containers.existing())) >= 3 + len(HOSPITALS)  # the services, still up
    host.stop_all()  # DemoError if the engine leaves one of them
    assert all(not s.processes() for s in host.services.values())
    assert not set(names) & set(host.containers.existing())


COMPOSE_FILE = ["-f", "configs/deployment/compose.yaml"]
HOSPITALS_FIRST = next(iter(HOSPITALS))
# From inside a hospital's container: which of the SuperLink container's ports answer on compose's network
REACH = ("import json, socket\n"
         "def answers(port):\n"
         "    try:\n"
         "        socket.create_connection(('superlink', port), timeout=5).close()\n"
         "        return True\n"
         "    except OSError:\n"
         "        return False\n"
         "print(json.dumps({'fleet': answers(9093), 'control': answers(9092), 'registry': answers(9097)}))")


def _compose_tool(engine: containers.Engine) -> list[str]:
    if engine.name == "docker":
        return ["docker", "compose"]
    found = shutil.which("podman-compose") or shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    if engine.name == "podman" and found:
        return [found]
    pytest.skip(f"configs/deployment/compose.yaml needs docker compose or podman-compose; {engine.name} runs here "
                "(scripts/setup.sh --test installs podman and podman-compose)")


@pytest.fixture(scope="module")
def compose_study(engine, tmp_path_factory):
    """compose.yaml's own steps, as its header writes them: the demo folder, then up, register, up, run, down."""
    tool = _compose_tool(engine)
    folder = tmp_path_factory.mktemp("compose") / "deploy-compose"
    printed = lay_out_compose(folder)
    exported = next(line for line in printed.splitlines() if "FEDHEALTH_UID=" in line)
    ids = dict(word.split("=", 1) for word in exported.split() if word.startswith(("FEDHEALTH_UID=", "FEDHEALTH_GID=")))
    env = {**engine.environ(), "FEDHEALTH_DEMO": str(folder), **ids}

    def compose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*tool, *COMPOSE_FILE, *args], cwd=PROJECT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    def logs() -> str:
        return compose("logs", timeout=60).stdout[-6000:]

    try:
        up = compose("up", "-d", "superlink", "gateway", "registry")
        assert up.returncode == 0, up.stdout + up.stderr
        deadline = time.monotonic() + 120  # the SuperLink needs a few seconds before it takes registrations
        while True:
            register = compose("exec", "-T", "superlink", containers.SERVER_ENTRYPOINT, "register", timeout=120)
            if register.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert register.returncode == 0, register.stdout + register.stderr + logs()
        up = compose("up", "-d", *HOSPITALS)
        assert up.returncode == 0, up.stdout + up.stderr
        run = compose("exec", "-T", "superlink", containers.SERVER_ENTRYPOINT, "run", timeout=900)
        reach = compose("exec", "-T", HOSPITALS_FIRST, "/opt/venv/bin/python", "-c", REACH, timeout=120)
        yield folder, run, logs(), compose, reach
    finally:
        down = compose("down", "--timeout", "20", timeout=300)
        print(down.stdout[-2000:], down.stderr[-2000:])


def test_compose_yaml_runs_the_study_as_its_header_says(compose_study):
    folder, run, logs, *_ = compose_study
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:] + logs
    (out,) = list((folder / "server" / "state" / "runs").iterdir())
    assert state_of(out) == "completed"
    rounds = rounds_of(out)
    assert [r["status"] for r in rounds] == ["aggregated"]
    assert len(rounds[0]["hospitals_aggregated"]) == len(HOSPITALS)
    for name in HOSPITALS:
        site = folder / "hospitals" / name
        report = verify_audit_log(site / "state" / "audit" / "audit.jsonl", site / "keys" / "audit_signing.pub")
        assert report.ok and report.entries >= 1, (name, report)
        cap = tomllib.loads((site / "policy.toml").read_text())["max_epsilon"]
        entries = json.loads((site / "state" / "ledger" / f"{name}.json").read_text())["entries"]
        assert len(entries) == 1 and 0 < entries[0]["epsilon"] <= cap, (name, entries, cap)


def test_a_hospital_reaches_only_the_gateway_of_the_superlinks_container(compose_study):
    """The Control API (no authentication of its own in flwr 1.41) and the app registry listen on the SuperLink
    container's loopback: a hospital on compose's network reaches the gateway's Fleet API and nothing else."""
    *_, reach = compose_study
    assert reach.returncode == 0, reach.stdout + reach.stderr
    assert json.loads(reach.stdout.strip().splitlines()[-1]) == {"fleet": True, "control": False, "registry": False}


def test_compose_down_leaves_no_container_of_the_study(engine, compose_study):
    *_, compose, _ = compose_study

    def listed() -> list[str]:
        done = subprocess.run([engine.name, "ps", "-a", "--filter", "label=com.docker.compose.project=fedhealth-demo",
                               "--format", "{{.Names}}"], capture_output=True, text=True, env=engine.environ())
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert len(listed()) == 3 + len(HOSPITALS)  # the filter sees the study's containers while they are up
    down = compose("down", "--timeout", "20")
    assert down.returncode == 0, down.stdout + down.stderr
    assert listed() == []
