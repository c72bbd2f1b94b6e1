"""CORS, with FastChat's flags (``--allowed-origins``, ``--allowed-methods``, ``--allowed-headers``,
``--allow-credentials``).

Off unless origins are given: FastChat allows every origin by default, which lets any web page a user opens call a
server on their network. With ``--allowed-origins '*'`` queuechat behaves as FastChat does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware


@dataclass
class CorsOptions:
    allowed_origins: list[str] = field(default_factory=list)
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False


def install_cors(app: FastAPI, options: CorsOptions | None) -> None:
    if options is None or not options.allowed_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=options.allowed_origins,
        allow_methods=options.allowed_methods,
        allow_headers=options.allowed_headers,
        allow_credentials=options.allow_credentials,
        expose_headers=["x-request-id"],  # so browser clients can read it, e.g. to report a failure
    )


def split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
