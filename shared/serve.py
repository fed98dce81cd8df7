"""Run a FastAPI app with uvicorn from a service's settings (used by ``vineppo serve ...``)."""

from __future__ import annotations

from fastapi import FastAPI

from shared.settings import ServiceSettings


def run(app: FastAPI, settings: ServiceSettings) -> None:
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
