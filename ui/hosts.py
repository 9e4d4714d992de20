"""Which Host headers the app's server answers: loopback names only, unless the user configured another address.

Why: DNS rebinding. A web page on a domain the attacker controls (evil.example) first resolves to the attacker's
server, then to 127.0.0.1; the browser then sends that page's requests, and its WebSocket, to this app as
"same origin", with `Host: evil.example:8501`. Streamlit's XSRF and CORS checks compare the page with itself, so
they pass, and the page could drive the folder and Train forms. The one thing such a request cannot fake is its
Host header, so the server answers only names that cannot be rebound: localhost and loopback IP literals (any port),
plus the address the user configured (`server.address`, `browser.serverAddress`) and names listed in
CAPTION_ALLOWED_HOSTS (comma-separated; "*" accepts any). With `server.address` 0.0.0.0 or :: (listen on every
network), this machine's own names and addresses are accepted too.

Starlette's TrustedHostMiddleware is not used: it splits the header at the first ":", so "[::1]:8501" reads as
"[" and IPv6 loopback is refused.
"""
from __future__ import annotations

import ipaddress
import os
import socket

from core.base.paths import ALLOWED_HOSTS_ENV

WILDCARDS = ("0.0.0.0", "::", "")
REFUSED = (b"This server answers only requests addressed to localhost, 127.0.0.1 or [::1]. To open the app under "
           b"another name, start it with --server.address set to that address, or list the name in "
           + ALLOWED_HOSTS_ENV.encode() + b".\n")


def host_name(header: str) -> str:
    """The host part of a Host header, lower-case, without port, brackets or a trailing dot: "[::1]:8501" -> "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        name = header[1:header.find("]")] if "]" in header else ""
    elif header.count(":") == 1:
        name = header.partition(":")[0]
    else:
        name = header  # a bare IPv6 address (no port), or nothing
    return name.rstrip(".")


def is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _machine_names() -> set[str]:
    """This machine's host names and interface addresses: what another computer on the network calls it."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    try:
        import psutil

        for addresses in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0].lower() for a in addresses
                         if a.family in (socket.AF_INET, socket.AF_INET6))
    except Exception:  # noqa: BLE001 (an unusual platform: the host names above still count)
        pass
    return names


def allowed_names(server_address: str | None = None, browser_address: str | None = None,
                  extra: str | None = None) -> set[str] | None:
    """The host names answered besides loopback ones; None: any (the user asked for that with "*")."""
    extra = os.environ.get(ALLOWED_HOSTS_ENV, "") if extra is None else extra
    names = {host_name(n) for n in extra.split(",") if n.strip()}
    if "*" in names:
        return None
    for address in (server_address, browser_address):
        if address is None:
            continue
        address = host_name(address)
        if address in WILDCARDS:
            names |= _machine_names()
        else:
            names.add(address)
    names.discard("")
    return names


def configured_names() -> set[str] | None:
    """allowed_names() for the running Streamlit server: the addresses the user set, not Streamlit's defaults."""
    from streamlit import config

    def manual(option: str) -> str | None:
        return str(config.get_option(option) or "") if config.is_manually_set(option) else None

    return allowed_names(manual("server.address"), manual("browser.serverAddress"))


class HostCheck:
    """ASGI middleware: HTTP requests and WebSocket handshakes with a Host header not allowed get 403."""

    def __init__(self, app, names: set[str] | None = None):
        self.app = app
        self.names = configured_names() if names is None else names

    def allows(self, header: str) -> bool:
        name = host_name(header)
        return self.names is None or is_loopback(name) or name in self.names

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if not self.allows(header):
                if scope["type"] == "websocket":  # closing before accepting: the handshake is answered 403
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(REFUSED)).encode())]})
                await send({"type": "http.response.body", "body": REFUSED})
                return
        await self.app(scope, receive, send)


def install() -> bool:
    """Put HostCheck in front of Streamlit's own middleware (Streamlit 1.67 serves through Starlette). False, with
    a warning, when this Streamlit has no such hook: the app then starts without the check."""
    try:
        from starlette.middleware import Middleware
        from streamlit.web.server.starlette import starlette_app
    except ImportError:
        return False
    original = getattr(starlette_app, "create_streamlit_middleware", None)
    if original is None:
        return False
    if getattr(original, "with_host_check", False):
        return True

    def with_host_check():
        return [Middleware(HostCheck), *original()]

    with_host_check.with_host_check = True
    starlette_app.create_streamlit_middleware = with_host_check
    return True
