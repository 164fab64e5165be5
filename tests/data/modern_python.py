"""A small settings loader in the style of today's third-party packages: type hints,
dataclasses, f-strings, pathlib, enums and asyncio. Used as held-out text by
tests/test_default_model.py; nothing imports it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Level(str, Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"


class SettingsError(ValueError):
    """Raised when a settings file cannot be read or holds a wrong value."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = 443
    path: str = "/"

    @property
    def url(self) -> str:
        scheme = "https" if self.port == 443 else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"


@dataclass
class Settings:
    name: str
    endpoints: list[Endpoint] = field(default_factory=list)
    level: Level = Level.INFO
    timeout: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Settings:
        try:
            name = str(data["name"])
        except KeyError as exc:
            raise SettingsError("missing required key: name") from exc
        endpoints = [Endpoint(**item) for item in data.get("endpoints", [])]
        level = Level(data.get("level", Level.INFO.value))
        timeout = float(data.get("timeout", 10.0))
        if timeout <= 0:
            raise SettingsError(f"timeout must be positive, got {timeout!r}")
        known = {"name", "endpoints", "level", "timeout"}
        extra = {key: value for key, value in data.items() if key not in known}
        return cls(name=name, endpoints=endpoints, level=level, timeout=timeout, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoints": [vars(endpoint) for endpoint in self.endpoints],
            "level": self.level.value,
            "timeout": self.timeout,
            **self.extra,
        }


def load_settings(path: str | os.PathLike[str]) -> Settings:
    path = Path(path)
    if not path.exists():
        raise SettingsError(f"settings file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected an object, got {type(data).__name__}")
    settings = Settings.from_mapping(data)
    logger.debug("loaded %s with %d endpoints", settings.name, len(settings.endpoints))
    return settings


def merge(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    data = base.to_dict()
    data.update(overrides)
    return Settings.from_mapping(data)


async def check_endpoint(endpoint: Endpoint, timeout: float) -> bool:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.host, endpoint.port), timeout=timeout
        )
    except (OSError, asyncio.TimeoutError):
        logger.warning("cannot reach %s", endpoint.url)
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def check_all(settings: Settings) -> dict[str, bool]:
    results = await asyncio.gather(
        *(check_endpoint(endpoint, settings.timeout) for endpoint in settings.endpoints)
    )
    return {endpoint.url: ok for endpoint, ok in zip(settings.endpoints, results, strict=True)}


def first_reachable(results: Mapping[str, bool]) -> str | None:
    return next((url for url, ok in results.items() if ok), None)


def names(items: Iterable[Settings]) -> list[str]:
    return sorted({item.name for item in items})
