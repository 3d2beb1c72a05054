"""Loopback helpers for the tests of published ports: a free port, one plain HTTP GET, and the
busybox web server a container runs."""

from __future__ import annotations

import socket

HTTPD = "mkdir -p /www && echo served-from-container > /www/index.html && exec httpd -f -p 80 -h /www"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int) -> bytes | None:
    """GET /index.html from 127.0.0.1:PORT: the whole answer, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data
    except OSError:
        return None
