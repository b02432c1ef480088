"""A native Python client in Xinference's style, over Tritium's OpenAI endpoints.

    from tritium.client import Client

    client = Client("http://127.0.0.1:8000")
    model = client.get_model("smollm2-135m-instruct")
    model.chat([{"role": "user", "content": "Hi"}], generate_config={"max_tokens": 32})
    for chunk in model.generate("Once upon", generate_config={"stream": True}):
        print(chunk["choices"][0]["text"], end="")

`AsyncClient` is the same with `await` / `async for`. Responses are the OpenAI JSON
objects as dicts (`chat.completion`, `text_completion` and their chunks). Only httpx
is needed: no adapter, engine or torch import, so it installs anywhere.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

ChatMessages = list[dict[str, Any]]
GenerateConfig = dict[str, Any]


class ClientError(Exception):
    """An error answer of the server: its HTTP status and OpenAI error object.

    `status_code` is None for an error event in a stream (the status was already 200).
    """

    def __init__(self, status_code: int | None, error: dict[str, Any]) -> None:
        self.status_code = status_code
        self.message = str(error.get("message", ""))
        self.type = error.get("type")
        self.param = error.get("param")
        self.code = error.get("code")
        super().__init__(f"{status_code or 'stream'} {self.code or self.type}: {self.message}")


def _api_base(url: str) -> str:
    """Accept the server's root (Xinference style) or its /v1 base (OpenAI style)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _body(model: str, generate_config: GenerateConfig | None, **fields: Any) -> dict[str, Any]:
    # generate_config holds the request's fields (max_tokens, temperature, stream, ...).
    return {**(generate_config or {}), **fields, "model": model}


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise _error_of(response.status_code, response.text)
    return response.json()


def _error_of(status_code: int, text: str) -> ClientError:
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    return ClientError(status_code, error if isinstance(error, dict) else {"message": text})


def _event(line: str) -> dict[str, Any] | None:
    """One SSE line -> its chunk; None for blank lines, comments and [DONE]."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if data == "[DONE]":
        return None
    payload = json.loads(data)
    error = payload.get("error")
    if error is not None:  # the server ended the stream with an error event
        raise ClientError(None, error if isinstance(error, dict) else {"message": str(error)})
    return payload


def _models_by_id(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {card["id"]: card for card in listing.get("data", [])}


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600) -> None:
        self.http = httpx.Client(
            base_url=_api_base(base_url), headers=_headers(api_key), timeout=timeout_s
        )

    def list_models(self) -> dict[str, dict[str, Any]]:
        """Model id -> its card (`id`, `owned_by`, `max_model_len`, ...)."""
        return _models_by_id(_checked(self.http.get("/models")))

    def get_model(self, model_uid: str) -> Model:
        _checked(self.http.get(f"/models/{model_uid}"))  # an unknown model fails here (404)
        return Model(self, model_uid)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | Iterator[dict[str, Any]]:
        if body.get("stream"):
            return self._stream(path, body)
        return _checked(self.http.post(path, json=body))

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with self.http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                raise _error_of(response.status_code, response.read().decode(errors="replace"))
            for line in response.iter_lines():
                chunk = _event(line)
                if chunk is not None:
                    yield chunk


class Model:
    """One model of the server (`Client.get_model`)."""

    def __init__(self, client: Client, model_uid: str) -> None:
        self.client = client
        self.model_uid = model_uid

    def chat(
        self, messages: ChatMessages, generate_config: GenerateConfig | None = None
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """A `chat.completion`, or an iterator of chunks with {"stream": True}."""
        body = _body(self.model_uid, generate_config, messages=messages)
        return self.client._post("/chat/completions", body)

    def generate(
        self, prompt: str, generate_config: GenerateConfig | None = None
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """A `text_completion`, or an iterator of chunks with {"stream": True}."""
        body = _body(self.model_uid, generate_config, prompt=prompt)
        return self.client._post("/completions", body)


class AsyncClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600) -> None:
        self.http = httpx.AsyncClient(
            base_url=_api_base(base_url), headers=_headers(api_key), timeout=timeout_s
        )

    async def list_models(self) -> dict[str, dict[str, Any]]:
        return _models_by_id(_checked(await self.http.get("/models")))

    async def get_model(self, model_uid: str) -> AsyncModel:
        _checked(await self.http.get(f"/models/{model_uid}"))
        return AsyncModel(self, model_uid)

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _post(
        self, path: str, body: dict[str, Any]
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        if body.get("stream"):
            return self._stream(path, body)
        return _checked(await self.http.post(path, json=body))

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with self.http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                text = (await response.aread()).decode(errors="replace")
                raise _error_of(response.status_code, text)
            async for line in response.aiter_lines():
                chunk = _event(line)
                if chunk is not None:
                    yield chunk


class AsyncModel:
    """One model of the server (`await AsyncClient.get_model`)."""

    def __init__(self, client: AsyncClient, model_uid: str) -> None:
        self.client = client
        self.model_uid = model_uid

    async def chat(
        self, messages: ChatMessages, generate_config: GenerateConfig | None = None
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """A `chat.completion`, or (after await) an async iterator of chunks when streaming."""
        body = _body(self.model_uid, generate_config, messages=messages)
        return await self.client._post("/chat/completions", body)

    async def generate(
        self, prompt: str, generate_config: GenerateConfig | None = None
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        body = _body(self.model_uid, generate_config, prompt=prompt)
        return await self.client._post("/completions", body)
