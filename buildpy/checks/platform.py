"""Platform strings (`linux/arm64/v8`) read and normalised as containerd's `platforms` package
does, as far as the checks need: FromPlatformFlagConstDisallowed and InvalidBaseImagePlatform."""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")
_KNOWN_OS = frozenset(
    "aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd plan9 solaris "
    "wasip1 windows zos".split()
)
_KNOWN_ARCH = frozenset(
    "386 amd64 amd64p32 arm armbe arm64 arm64be loong64 mips mipsle mips64 mips64le mips64p32 "
    "mips64p32le ppc ppc64 ppc64le riscv riscv64 s390 s390x sparc sparc64 wasm".split()
)


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    arch: str
    variant: str = ""

    def __str__(self) -> str:
        """containerd's FormatAll: os/arch[/variant]."""
        return "/".join(p for p in (self.os, self.arch, self.variant) if p)


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch in ("i386", "i686", "386"):
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8", "v8.0") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def parse_platform(text: str, default_os: str = "linux", default_arch: str = "amd64") -> Platform | None:
    """The normalised platform `text` names; None where containerd's Parse fails."""
    parts = text.split("/")
    if not text or len(parts) > 3 or not all(_COMPONENT.fullmatch(p) for p in parts):
        return None
    if len(parts) == 1:
        word = parts[0].lower()
        if word in _KNOWN_OS:
            return Platform(word, *normalize_arch(default_arch, ""))
        arch, variant = normalize_arch(word, "")
        if arch in _KNOWN_ARCH:
            return Platform(default_os, arch, variant)
        return None
    os_name = parts[0].lower()
    arch, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    return Platform(os_name, arch, variant)
