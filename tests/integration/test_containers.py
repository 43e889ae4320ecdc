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
import tomllib

import pytest

from fedhealth.deployment import containers
from fedhealth.deployment.demo import HOSPITALS, PROJECT, demo, rounds_of, state_of

pytestmark = [pytest.mark.slow, pytest.mark.containers]

ABSENT_TOOLS = ("pip", "pip3", "apt-get", "apt", "dpkg", "su", "curl", "wget", "gcc", "cc", "make", "ssh")


def _why_not() -> str | None:
    if not any(shutil.which(e) for e in ("docker", "podman", "buildah")):
        return "neither docker, podman nor buildah is installed (scripts/setup.sh --test installs buildah)"
    if shutil.which("buildah") and os.geteuid() != 0 and not shutil.which("podman"):
        return "buildah's chroot isolation runs as root only here"
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
def engine(built) -> str:
    found = containers.engine_that_runs()
    assert found is not None
    return found


def _inside(engine: str, image: str, script: str, mounts=()) -> str:
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
        "import json, os, shutil; import flwr, torch, opacus, fedhealth\n"
        f"print(json.dumps({{'uid': os.getuid(), 'present': [t for t in {ABSENT_TOOLS!r} if shutil.which(t)],"
        " 'telemetry': os.environ.get('FLWR_TELEMETRY_ENABLED'), 'torch': torch.__version__,"
        " 'cuda': torch.version.cuda, 'ray': __import__('importlib.util').util.find_spec('ray') is not None}))")
    seen = json.loads(_inside(engine, image, script).strip().splitlines()[-1])
    assert seen["uid"] == containers.UID
    assert seen["present"] == []
    assert seen["telemetry"] == "0"
    assert seen["torch"].startswith("2.13.0") and seen["cuda"] is None  # the CPU build
    assert seen["ray"] is False  # the simulation engine is not in a deployment image


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
        " 'readable': len(open('/data/data.csv').readline()) > 0}))")
    seen = json.loads(_inside(engine, containers.HOSPITAL_IMAGE, script, host.hospital_mounts(name)).splitlines()[-1])
    assert seen["uid"] == containers.UID and seen["readable"]
    assert all(seen["read_only"].values()), seen  # mounted read-only: no write reaches the host's file
    assert all(code in ("EROFS", "EACCES") for code in seen["write"].values()), seen
    assert seen["state_read_only"] is False  # the ledger and audit volume is the one writable place


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
    host.stop_all()
    assert all(not s.processes() for s in host.services.values())
