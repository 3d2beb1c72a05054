"""A container's network: `none` (its own namespace, loopback only), `host` (the host's), and
`private` (its own namespace with loopback and, where Debian's slirp4netns is installed, a
user-mode uplink and `-p` ports published on the host, as rootless podman does it).

slirp4netns attaches to the namespace of the sandbox's first process (the `on_start` hook,
before anything runs inside), configures tap0 (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3),
and forwards each published port from the host through its API socket. The host's loopback is
out of the container's reach (`--disable-host-loopback`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from buildpy.containers.state import ContainerError

NETWORKS = ("private", "none", "host")
SLIRP = "slirp4netns"
READY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Port:
    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.proto}"


def parse_port(text: str) -> Port:
    """`-p [IP:]HOSTPORT:CTRPORT[/tcp|/udp]` (docker's forms, without ranges)."""
    m = re.fullmatch(r"(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?", text)
    if not m:
        raise ContainerError(f"invalid -p {text!r}: expected [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]")
    ip, host, ctr, proto = m.group(1) or "127.0.0.1", int(m.group(2)), int(m.group(3)), m.group(4) or "tcp"
    if not (0 < host < 65536 and 0 < ctr < 65536):
        raise ContainerError(f"invalid -p {text!r}: ports are 1 to 65535")
    return Port(ip, host, ctr, proto)


def recorded_port(text: str) -> Port:
    """A Port back from its `str`, as a container's record keeps it."""
    m = re.fullmatch(r"(.+):(\d+)->(\d+)/(tcp|udp)", text)
    if not m:
        raise ContainerError(f"a container record's port {text!r} is not HOSTIP:HOSTPORT->PORT/PROTO")
    return Port(m.group(1), int(m.group(2)), int(m.group(3)), m.group(4))


def uplink_available() -> bool:
    return shutil.which(SLIRP) is not None


def check(network: str, ports: list[Port]) -> None:
    if network not in NETWORKS:
        raise ContainerError(f"invalid --network {network!r}: private, none or host")
    if ports and network != "private":
        raise ContainerError(f"-p needs --network private (the container's own network), not {network}")
    if ports and not uplink_available():
        raise ContainerError("-p needs slirp4netns (Debian package slirp4netns) to publish ports; "
                             "without it --network private is loopback only")


class Uplink:
    """slirp4netns attached to one sandbox; `close()` ends it."""

    def __init__(self, ports: list[Port]) -> None:
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="buildpy-net-"))
        self.api = self.dir / "api.sock"

    def attach(self, pid: int) -> None:
        ready_r, ready_w = os.pipe()
        args = [SLIRP, "--configure", "--mtu=65520", "--disable-host-loopback", f"--ready-fd={ready_w}",
                f"--api-socket={self.api}"]
        if os.geteuid() != 0:
            args.append(f"--userns-path=/proc/{pid}/ns/user")
        args += [str(pid), "tap0"]
        try:
            self.proc = subprocess.Popen(args, pass_fds=(ready_w,), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            os.close(ready_w)
        try:
            import select

            ready, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
            if not ready or os.read(ready_r, 1) != b"1":
                raise ContainerError(f"slirp4netns did not come up: {self._stderr()}")
        finally:
            os.close(ready_r)
        for port in self.ports:
            self._forward(port)

    def _forward(self, port: Port) -> None:
        request = {"execute": "add_hostfwd", "arguments": {
            "proto": port.proto, "host_addr": port.host_ip, "host_port": port.host_port,
            "guest_port": port.container_port}}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(READY_TIMEOUT)
            s.connect(str(self.api))
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        try:
            obj = json.loads(answer)
        except ValueError:
            obj = {"error": {"desc": answer.decode(errors="replace")}}
        if "error" in obj:
            desc = obj["error"].get("desc", obj["error"]) if isinstance(obj["error"], dict) else obj["error"]
            raise ContainerError(f"cannot publish {port}: {desc}")

    def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return "not started"
        with contextlib.suppress(Exception):
            if self.proc.poll() is not None:
                return self.proc.stderr.read().decode(errors="replace").strip().splitlines()[-1]
        return "no answer"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
