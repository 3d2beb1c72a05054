"""GET /_ping, /version, /info: what the docker CLI asks before anything else; GET /system/df:
the disk usage of images, containers and volumes (`docker system df`), from
`buildpy.containers.usage`."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import time
from typing import Any

from buildpy.api.errors import ApiError
from buildpy.api.routing import Query, route
from buildpy.cas.store import Store

API_VERSION = "1.41"
MIN_API_VERSION = "1.24"
OLDEST, NEWEST = (1, 24), (1, 45)  # the /v1.NN/ prefixes accepted

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


def version_string() -> str:
    from buildpy import __version__

    return f"buildpy-{__version__}"


def arch() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def ping_headers() -> dict[str, str]:
    return {
        "API-Version": API_VERSION,
        "Docker-Experimental": "false",
        "Ostype": "linux",
        "Builder-Version": "1",  # the classic builder: POST /build
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
    }


def version() -> dict[str, Any]:
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "GitCommit": "", "GoVersion": "n/a",
               "Os": "linux", "Arch": arch(), "KernelVersion": platform.release(), "BuildTime": "",
               "Experimental": "false"}
    return {
        "Platform": {"Name": "buildpy"},
        "Components": [{"Name": "Engine", "Version": version_string(), "Details": details}],
        "Version": version_string(),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "n/a",
        "Os": "linux",
        "Arch": arch(),
        "KernelVersion": platform.release(),
        "BuildTime": "",
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "PRETTY_NAME":
                    return value.strip('"')
    except OSError:
        pass
    return "Linux"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def info(store: Store) -> dict[str, Any]:
    from buildpy.cas.reference import tagged_images

    from buildpy.containers import state

    images = {t.image.id for t in tagged_images(store)}
    containers = state.all_containers(store)  # a running record whose supervisor is gone reads as exited
    running = sum(c.status == "running" for c in containers)
    ident = hashlib.sha256(str(store.root).encode("utf-8", "surrogateescape")).hexdigest()[:32].upper()
    return {
        "ID": ":".join(ident[i:i + 4] for i in range(0, 32, 4)),
        "Containers": len(containers),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": len(containers) - running,
        "Images": len(images),
        "Driver": "buildpy",
        "DriverStatus": [],
        "Plugins": {"Volume": [], "Network": [], "Authorization": None, "Log": []},
        "MemoryLimit": False,
        "SwapLimit": False,
        "CpuCfsPeriod": False,
        "CpuCfsQuota": False,
        "CPUShares": False,
        "CPUSet": False,
        "PidsLimit": False,
        "IPv4Forwarding": False,
        "Debug": False,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": "",
        "LoggingDriver": "",
        "CgroupDriver": "",
        "CgroupVersion": "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1",
        "NEventsListener": 0,
        "KernelVersion": platform.release(),
        "OperatingSystem": _os_name(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": None,
        "NCPU": os.cpu_count() or 1,
        "MemTotal": _mem_total(),
        "GenericResources": None,
        "DockerRootDir": str(store.root),
        "HttpProxy": os.environ.get("HTTP_PROXY", ""),
        "HttpsProxy": os.environ.get("HTTPS_PROXY", ""),
        "NoProxy": os.environ.get("NO_PROXY", ""),
        "Name": socket.gethostname(),
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": version_string(),
        "Runtimes": {},
        "DefaultRuntime": "",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                  "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": False,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": [],
        "Warnings": [],
    }


def disk_usage(store: Store) -> dict[str, Any]:
    """GET /system/df in v1.41's shapes: images as /images/json lists them with SharedSize and
    Containers filled in, containers as /containers/json with SizeRw (their upper dir) and
    SizeRootFs, volumes as /volumes with UsageData; buildpy keeps no BuildKit cache."""
    from buildpy.api import containers as api_containers
    from buildpy.api import images as api_images
    from buildpy.api import volumes as api_volumes
    from buildpy.cas.reference import tagged_images
    from buildpy.containers import supervisor, usage, volumes

    tagged = tagged_images(store)
    layers = usage.layer_usage(t.image for t in tagged)
    digests: dict[str, set[str]] = {}  # image id -> the manifests that name it
    for t in tagged:
        digests.setdefault(t.image.id, set()).add(t.image.digest)
    sup = supervisor.for_store(store)
    all_containers = sup.all()
    images = api_images.list_images(store, {})
    for entry in images:
        mine = digests.get(entry["Id"], set())
        entry["SharedSize"] = layers.shared.get(entry["Id"], 0)
        entry["Containers"] = sum(c.image_digest in mine or c.extra.get("resolved", {}).get("image_id") == entry["Id"]
                                  for c in all_containers)
    sizes = {t.image.digest: t.image.size for t in tagged}
    now = time.time()
    ctrs = []
    for c in all_containers:
        entry = api_containers.summary(sup, c, now)
        entry["SizeRw"] = usage.change_size(store, c)
        entry["SizeRootFs"] = entry["SizeRw"] + sizes.get(c.image_digest, 0)
        ctrs.append(entry)
    vols = []
    for name in volumes.names(store):
        try:
            v = volumes.get(store, name)
        except volumes.NoSuchVolume:
            continue  # removed meanwhile
        used = usage.volume_usage(store, name)
        vols.append({**api_volumes.describe(v), "UsageData": {"Size": used.size, "RefCount": used.ref_count}})
    return {"LayersSize": layers.total, "Images": images, "Containers": ctrs, "Volumes": vols, "BuildCache": []}


# endpoints


@route("GET", r"/_ping")
def _ping(h, q: Query) -> None:  # noqa: ANN001 - h: the server's exchange
    h.send(200, b"OK", "text/plain; charset=utf-8", ping_headers())


@route("GET", r"/version")
def _version(h, q: Query) -> None:  # noqa: ANN001
    h.json(200, version())


@route("GET", r"/info")
def _info(h, q: Query) -> None:  # noqa: ANN001
    h.json(200, info(h.store))


@route("GET", r"/system/df")
def _df(h, q: Query) -> None:  # noqa: ANN001
    h.json(200, disk_usage(h.store))


# buildpy has no engine plugins: the list is empty and any named one is not found (the docker
# CLI's `inspect NAME` asks for a plugin last, then says "No such object")


@route("GET", r"/plugins")
def _plugins(h, q: Query) -> None:  # noqa: ANN001
    h.json(200, [])


@route("GET", r"/plugins/(.+)/json")
def _plugin(h, q: Query, name: str) -> None:  # noqa: ANN001
    raise ApiError(404, f"plugin {name!r} not found")
