"""Short forms for messages and logs, and the camelCase names of the JSON the server speaks."""

from __future__ import annotations

from typing import Any


def shorten(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with "..." when longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def camel(name: str) -> str:
    """`max_new_tokens` -> `maxNewTokens`."""
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def camel_keys(values: dict[str, Any]) -> dict[str, Any]:
    """The dict with its (snake_case) keys in camelCase; values are left as they are."""
    return {camel(key): value for key, value in values.items()}
