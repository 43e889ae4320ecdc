"""The three-hospital deployment run through the built images (`scripts/build_images.sh`), not a checkout.

Why a second host beside `demo.Host`: an image that has never run a study is a liability in a hospital's
change-control process. `ContainerHost` is `demo.Host` with every party started from its image instead: the
registry, the gateway and the SuperLink from `fedhealth-server`, each hospital's SuperNode from
`fedhealth-hospital`, `register` and the study's `run` from the server image too. Each container sees only its
own mounts, at the paths of configs/deployment/compose.yaml: a hospital's data file and schema copy (read-only,
`/data`), its policy, the study CA and its own keys (read-only, `/etc/fedhealth`), and one writable state
folder (`/var/lib/fedhealth`: ledger, signed audit log, Flower's app cache). Every process runs as the image's
non-root user (uid 10001), which owns the demo folder's files as the key files' 0600 mode requires.

Engines: `docker run` or `podman run` where they work (host network, so every party is on 127.0.0.1 and
free ports, as in the native demo), else `buildah run --isolation chroot`, which shares the host's network and
applies the image's environment and user. On a host that does not let containers raise their resource
limits, plain `podman run` stops at setrlimit; there podman runs with configs/deployment/containers.conf
(`CONTAINERS_CONF` for this module's podman calls only; that file says why), as scripts/build_images.sh does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from fedhealth.deployment.demo import PROJECT, DemoError, Host, hand_to_containers, listening, log
from fedhealth.deployment.processes import Service, runtime_mark

SERVER_IMAGE = "fedhealth-server:latest"
HOSPITAL_IMAGE = "fedhealth-hospital:latest"
UID = 10001  # the images' service account (scripts/image_harden.sh)
SERVER_ENTRYPOINT = "/opt/fedhealth/server/entrypoint.sh"
HOSPITAL_ENTRYPOINT = "/opt/fedhealth/clients/entrypoint.sh"
# What a SuperNode reads of the hospital's keys/ folder: not app_approval, the private key whose signatures
# decide which apps this SuperNode runs, which stays out of reach of everything the SuperNode runs.
HOSPITAL_KEY_FILES = ("supernode_auth", "supernode_auth.pub", "audit_signing", "audit_signing.pub",
                      "trusted-entities.yaml")
STATE = "/var/lib/fedhealth"  # each container's one writable mount
PODMAN_CONF = PROJECT / "configs" / "deployment" / "containers.conf"


@dataclass(frozen=True)
class Mount:
    """A host path bound into a container; read-only unless `writable`."""

    source: Path
    target: str
    writable: bool = False

    def spec(self) -> str:
        return f"{self.source}:{self.target}:{'rw' if self.writable else 'ro'}"


@dataclass(frozen=True)
class Engine:
    """A container engine that starts containers here, and the environment its commands need."""

    name: str
    env: dict[str, str]

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}


def _starts(name: str, env: dict[str, str]) -> bool:
    done = subprocess.run([name, "run", "--rm", "--pull=never",
                           "--network", "host", "--entrypoint", "/bin/true", HOSPITAL_IMAGE],
                          capture_output=True, timeout=120, env={**os.environ, **env})
    return done.returncode == 0


def engine_that_runs() -> Engine | None:
    """docker or podman when `run` starts a container of the hospital image here (podman with
    configs/deployment/containers.conf where it needs it), else buildah when installed, else None."""
    if shutil.which("docker") and _starts("docker", {}):
        return Engine("docker", {})
    if shutil.which("podman"):
        if _starts("podman", {}):
            return Engine("podman", {})
        ours = {"CONTAINERS_CONF": str(PODMAN_CONF)}
        if "CONTAINERS_CONF" not in os.environ and _starts("podman", ours):
            return Engine("podman", ours)
    return Engine("buildah", {}) if shutil.which("buildah") else None


class Containers:
    """Runs one command in a fresh container of an image: the argv to start it, and its clean-up."""

    def __init__(self, engine: Engine) -> None:
        if engine.name not in ("docker", "podman", "buildah"):
            raise DemoError(f"container engine '{engine.name}': give docker, podman or buildah")
        self.engine = engine
        self.names: list[str] = []

    def argv(self, image: str, mounts: list[Mount], env: dict[str, str], command: list[str]) -> list[str]:
        """The command that runs `command` in a new container of `image` as the image's user, on the host's
        network, with only `mounts` and `env` from outside."""
        name = f"fedhealth-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        volumes = [arg for m in mounts for arg in ("-v", m.spec())]
        if self.engine.name == "buildah":
            done = subprocess.run(["buildah", "from", "--pull-never", "--name", name, image], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise DemoError(f"buildah from {image} failed: {done.stderr.strip()} (build it: "
                                "bash scripts/build_images.sh)")
            # the images declare VOLUME /var/lib/fedhealth, and buildah run mounts a fresh volume of its own there
            # over the bind mount (whichever it mounts last wins): undeclare it where the caller mounts it
            for target in {m.target for m in mounts} & {STATE}:
                subprocess.run(["buildah", "config", "--volume", f"{target}-", name], check=True, capture_output=True)
            envs = [arg for k, v in env.items() for arg in ("--env", f"{k}={v}")]
            return ["buildah", "run", "--isolation", "chroot", "--user", f"{UID}:{UID}", *volumes, *envs, name,
                    "--", *command]
        envs = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        # never a registry pull: an unqualified name could resolve to someone else's image
        pull = ["--pull=never"] if self.engine.name == "podman" else ["--pull", "never"]
        # no capability and no privilege gain: a SuperLink or SuperNode needs neither (ports above 1024)
        confined = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        return [self.engine.name, "run", "--rm", "--name", name, *pull, *confined, "--network", "host",
                "--user", f"{UID}:{UID}", *volumes, *envs, "--entrypoint", command[0], image, *command[1:]]

    def run(self, image: str, mounts: list[Mount], env: dict[str, str], command: list[str],
            timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `command` in a new container to its end."""
        return subprocess.run(self.argv(image, mounts, env, command), capture_output=True, text=True,
                              timeout=timeout, env=self.engine.environ())

    def remove_all(self) -> None:
        """Remove every container this object created (buildah keeps them until `buildah rm`); DemoError
        naming any that is still there afterwards."""
        engine = self.engine.name
        for name in self.names:
            cmd = {"buildah": ["buildah", "rm", name], "docker": ["docker", "rm", "--force", name],
                   "podman": ["podman", "rm", "--force", "--time", "5", name]}[engine]
            subprocess.run(cmd, capture_output=True, env=self.engine.environ())
        left = sorted(set(self.names) & set(self.existing()))
        self.names.clear()
        if left:
            raise DemoError(f"{engine} did not remove these containers: {', '.join(left)}")

    def existing(self) -> list[str]:
        """The names of the containers the engine has now (running or not), as the engine itself lists them."""
        if self.engine.name == "buildah":
            cmd = ["buildah", "containers", "--format", "{{.ContainerName}}"]
        else:
            cmd = [self.engine.name, "ps", "--all", "--format", "{{.Names}}"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.engine.environ(), check=True)
        return done.stdout.split()


class ContainerHost(Host):
    """`demo.Host` with the SuperLink, gateway, registry, operator CLI and SuperNodes run from the images."""

    def __init__(self, workdir: Path, engine: Engine) -> None:
        super().__init__(workdir)
        self.containers = Containers(engine)
        self.server_state = self.dir / "server"

    def state(self, name: str) -> Path:
        """A hospital's writable volume: ledger/, audit/, flwr-home/."""
        return self.site(name) / "state"

    def prepare(self) -> None:
        """The native demo's preparation, then each hospital's state volume, and every file handed to the
        images' non-root user (the keys are 0600, as `fedhealth certs` writes them)."""
        super().prepare()
        for name in self.hospitals:
            for sub in ("ledger", "audit", "flwr-home"):
                (self.state(name) / sub).mkdir(parents=True)
        (self.server_state / "runs").mkdir(parents=True)
        hand_to_containers(self.dir, UID)

    def _server_mounts(self, *extra: Mount) -> list[Mount]:
        pki = "/etc/fedhealth/pki"
        return [Mount(self.pki / "ca" / "ca.crt", f"{pki}/ca/ca.crt"), Mount(self.pki / "server", f"{pki}/server"),
                Mount(self.server_state, STATE, writable=True), *extra]

    def _server_env(self) -> dict[str, str]:
        return {"FEDHEALTH_PORT": str(self.link_port), "FEDHEALTH_GATEWAY_HOST": "127.0.0.1",
                "FEDHEALTH_GATEWAY_PORT": str(self.port), "FEDHEALTH_APP_REGISTRY": f"http://127.0.0.1:"
                f"{self.registry_port}", "FEDHEALTH_APP": self.app}

    def _start_in(self, name: str, image: str, mounts: list[Mount], env: dict[str, str], command: list[str],
                  marks: list[str]) -> Service:
        argv = self.containers.argv(image, mounts, env, command)
        service = Service(name, argv, self.dir / "logs" / f"{name}.log", cwd=self.dir, marks=marks,
                          env=self.containers.engine.env)
        self.services[name] = service.start()
        return service

    def start_superlink(self) -> Service:
        if "registry" not in self.services:
            registry = Mount(self.dir / "operator" / "registry", f"{STATE}/registry")
            self._start_in("registry", SERVER_IMAGE, [registry], {},
                           [SERVER_ENTRYPOINT, "registry", "--port", str(self.registry_port)], [])
            self._start_in("gateway", SERVER_IMAGE, self._server_mounts(), self._server_env(),
                           [SERVER_ENTRYPOINT, "gateway"], [])
        link = self._start_in("superlink", SERVER_IMAGE, self._server_mounts(), self._server_env(),
                              [SERVER_ENTRYPOINT, "start"], [runtime_mark(self.link_port)])
        return listening(link, 120)

    def connect_and_register(self) -> None:
        """`entrypoint.sh register` in the server image, with only the hospitals' public keys mounted."""
        keys = [Mount(self.pki / "hospitals" / h / "supernode_auth.pub",
                      f"/etc/fedhealth/pki/hospitals/{h}/supernode_auth.pub") for h in self.hospitals]
        done = self.containers.run(SERVER_IMAGE, self._server_mounts(*keys), self._server_env(),
                                   [SERVER_ENTRYPOINT, "register"])
        if done.returncode != 0:
            raise DemoError(f"register exited {done.returncode}\n{done.stdout}{done.stderr}")
        log(done.stdout.strip())

    def hospital_mounts(self, name: str) -> list[Mount]:
        site = self.site(name)
        return [Mount(site / "data.csv", "/data/data.csv"), Mount(site / "schema.toml", "/data/schema.toml"),
                Mount(site / "policy.toml", "/etc/fedhealth/policy.toml"),
                Mount(self.pki / "ca" / "ca.crt", "/etc/fedhealth/ca.crt"),
                *[Mount(site / "keys" / key, f"/etc/fedhealth/key/{key}") for key in HOSPITAL_KEY_FILES],
                Mount(self.state(name), STATE, writable=True)]

    def start_hospital(self, name: str) -> Service:
        env = {"FEDHEALTH_HOSPITAL": name, "FEDHEALTH_SUPERLINK": self.address,
               "FEDHEALTH_RUNTIME_PORT": str(self.ports[name]), **self.node_env}
        return self._start_in(name, HOSPITAL_IMAGE, self.hospital_mounts(name), env, [HOSPITAL_ENTRYPOINT],
                              [runtime_mark(self.ports[name])])

    def submit(self, config: str, out: Path, resume: bool = False) -> Service:
        """`entrypoint.sh run OUT` in the server image (the approved version, from the registry); `out` must lie
        in the server's state folder, which the SuperLink's container writes the run directory into."""
        inside = f"{STATE}/{out.relative_to(self.server_state)}"
        env = {**self._server_env(), "FEDHEALTH_STUDY": config}
        command = [SERVER_ENTRYPOINT, "run", *(["--resume"] if resume else []), inside]
        return self._start_in(f"run-{out.name}", SERVER_IMAGE, self._server_mounts(), env, command, [])

    def stop_all(self) -> None:
        super().stop_all()
        self.containers.remove_all()
