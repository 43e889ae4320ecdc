"""The hospitals' door to the SuperLink: an HTTPS gateway that passes the Fleet API and nothing else.

Why: Flower 1.41's SuperLink serves three APIs on *one* HTTPS host and port: the Fleet API that
SuperNodes use (`/v1/fleet/...`), the Control API (`/v1/control/...`: `flwr run`, `flwr supernode
register`, `flwr stop`, ...) and the Runtime API of its ServerApp processes (`/v1/runtime/...`)
(`flwr/superlink/main.py`, `create_app`; `--fleet-api-address` and `--control-api-address` are
deprecated and ignored by the HTTP server, `flwr/superlink/cli/flower_superlink.py`). And the open-
source Control API has no authentication of its own: without Flower's enterprise OIDC plugin
(`FLWR_OIDC_ENABLED`, absent from this distribution) every caller is the same anonymous account
(`flwr/superlink/config_loader.py`, `load_control_authn_plugin`). So whoever reaches that port can
submit code to run at every hospital and register SuperNode keys. A hospital must not be able to.

What we do: the SuperLink listens on 127.0.0.1 only (the operator's flwr CLI and its own ServerApp
processes reach it there), and this gateway listens on the address hospitals dial. It terminates TLS
with the study's server certificate, forwards `POST /v1/fleet/*` unchanged (headers included: node
authentication is a signed timestamp in headers, checked by the SuperLink itself) to the SuperLink
over TLS verified against the study CA, and answers everything else with 403, logged with the
caller's address. It adds no trust of its own: the SuperLink still authenticates every node.

    fedhealth deploy gateway --listen 0.0.0.0:9093 --superlink 127.0.0.1:9092 \
        --ca pki/ca/ca.crt --cert pki/server/server.crt --key pki/server/server.key
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

from fedhealth.errors import DeploymentError

FLEET_PREFIX = "/v1/fleet/"
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"}
REFUSAL = ("this address serves only the Fleet API of the study's SuperLink (SuperNodes); the Control API "
           "(flwr run, flwr supernode register, ...) and the Runtime API are reachable only from the operator's "
           "host")


def create_app(upstream: str, ca: str, timeout: float = 600.0) -> Any:
    """The gateway as an ASGI app forwarding Fleet API calls to `upstream` (https://HOST:PORT)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    context = ssl.create_default_context(cafile=ca)
    client = httpx.AsyncClient(base_url=upstream, verify=context, timeout=timeout)

    async def forward(request: Request) -> Response:
        path = request.url.path
        caller = request.client.host if request.client else "?"
        if request.method != "POST" or not path.startswith(FLEET_PREFIX) or ".." in path:
            print(f"gateway: refused {request.method} {path} from {caller}: not a Fleet API call", flush=True)
            return JSONResponse({"detail": REFUSAL}, status_code=403)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        try:
            reply = await client.post(path, content=await request.body(), headers=headers,
                                      params=request.query_params)
        except httpx.HTTPError as err:
            print(f"gateway: the SuperLink at {upstream} did not answer {path}: {err!r}", flush=True)
            return JSONResponse({"detail": "the study's SuperLink is unavailable"}, status_code=502)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP_BY_HOP}
        return Response(reply.content, status_code=reply.status_code, headers=out)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


class GatewayError(DeploymentError, ValueError):
    """An address the gateway cannot listen on or forward to (the message says which and why)."""


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise GatewayError(f"{address!r}: give HOST:PORT")
    return host.strip("[]"), int(port)


def serve(listen: str, superlink: str, ca: str, cert: str, key: str) -> None:
    """Listen on `listen` (HOST:PORT, TLS with `cert`/`key`) and forward the Fleet API to the SuperLink at
    `superlink` (its loopback HOST:PORT, verified against the study CA `ca`) until stopped.

    Raises GatewayError for an address that is not HOST:PORT or a gateway that would forward to itself."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    host, port = _split(listen)
    up_host, up_port = _split(superlink)
    if host == up_host and port == up_port:
        raise GatewayError("--listen and --superlink are the same address")
    import uvicorn

    upstream = f"https://{up_host}:{up_port}"
    print(f"gateway: Fleet API only, https://{host}:{port} -> {upstream}", flush=True)
    uvicorn.run(create_app(upstream, ca), host=host, port=port, ssl_certfile=cert, ssl_keyfile=key,
                log_level="warning", access_log=False)
