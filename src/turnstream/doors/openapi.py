"""Door: the OpenAPI 3.1 document of the HTTP listener (`GET /openapi.json`) and a page that
renders it (`GET /docs`, no CDN: the page and its script are served from this package).

Schemas are generated from the contract's message descriptors, in the spelling each door reads:
proto3 JSON (lowerCamelCase, the proto names accepted too) for the native routes; the field names
as declared, times as RFC 3339 strings and enums as lower-case words for Kubiya's. Each route
module declares its operations (`OPERATIONS`); this module only assembles and serves them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from turnstream import __version__

Schema = dict[str, Any]

_INTS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
}
_LONGS = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
}


@dataclass
class Schemas:
    """Component schemas built from descriptors, one spelling per instance."""

    style: str  # "proto3" (lowerCamelCase names, int64 as strings) or "kubiya"
    components: dict[str, Schema] = field(default_factory=dict)

    def name(self, descriptor: Descriptor) -> str:
        base = descriptor.full_name.replace(".", "_")
        return base if self.style == "proto3" else f"kubiya_{base}"

    def ref(self, descriptor: Descriptor) -> Schema:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = self.name(descriptor)
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages terminate
            self.components[name] = self._message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, descriptor: Descriptor) -> Schema:
        props: dict[str, Schema] = {}
        for f in descriptor.fields:
            schema = self._field(f)
            props[f.json_name if self.style == "proto3" else f.name] = schema
        return {"type": "object", "properties": props, "description": descriptor.full_name}

    def _field(self, f: FieldDescriptor) -> Schema:
        if f.is_repeated:
            return {"type": "array", "items": self._single(f)}
        return self._single(f)

    def _single(self, f: FieldDescriptor) -> Schema:
        if f.message_type is not None:
            return self.ref(f.message_type)
        if f.enum_type is not None:
            names = [v.name for v in f.enum_type.values]
            if self.style == "kubiya":
                prefix = "_".join(_words(f.enum_type.name)).upper() + "_"
                names = [n.removeprefix(prefix).lower() for n in names[1:]]
                names += ["in_progress", "canceled", "queued"] if "running" in names else []
            return {"type": "string", "enum": names}
        if f.type in _INTS:
            return {"type": "integer"}
        if f.type in _LONGS:
            # proto3 JSON writes 64-bit integers as strings and reads either form.
            return (
                {"type": ["string", "integer"]} if self.style == "proto3" else {"type": "integer"}
            )
        if f.type in _FLOATS:
            return {"type": "number"}
        if f.type == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if f.type == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}


def _words(camel: str) -> list[str]:
    out, word = [], ""
    for c in camel:
        if c.isupper() and word:
            out.append(word)
            word = ""
        word += c
    return [*out, word]


AIP193: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "status"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "status": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}


def json_body(schema: Schema, description: str = "") -> Schema:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def error_responses(schema: Schema, codes: Iterable[str]) -> dict[str, Schema]:
    words = {
        "400": "Malformed JSON or an invalid record",
        "404": "Not found",
        "413": "Body over the size limit",
        "415": "Not JSON",
        "422": "Validation error (FastAPI's shape)",
        "503": "The database is unavailable; retry after Retry-After",
        "500": "Unexpected server error (an incident id in the message)",
    }
    return {code: json_body(schema, words.get(code, "Error")) for code in codes}


@dataclass(frozen=True)
class Document:
    """The OpenAPI document: operations by path and method, and component schemas."""

    paths: dict[str, dict[str, Schema]]
    components: dict[str, Schema]

    def json(self) -> Schema:
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "turnstream",
                "version": __version__,
                "description": "Ingestion of LLM-agent telemetry. Every 2xx answer is sent "
                "after the records are committed; retries never store anything twice; invalid "
                "records are answered field by field and kept as dead letters.",
            },
            "paths": self.paths,
            "components": {
                "schemas": self.components,
                # docs/auth.md: `Bearer <key>` (Kubiya's `UserKey <key>` is accepted too).
                "securitySchemes": {
                    "apiKey": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "A key from `turnstream keys create` "
                        "(ts_<key_id>_<secret>). Not needed on a loopback server without keys.",
                    }
                },
            },
            "security": [{"apiKey": []}],
        }


def routes(document: Document) -> list[BaseRoute]:
    body = document.json()

    async def spec(_request: Request) -> Response:
        return JSONResponse(body)

    async def docs(_request: Request) -> Response:
        return HTMLResponse(_asset("docs.html"))

    async def script(_request: Request) -> Response:
        return Response(_asset("docs.js"), media_type="text/javascript")

    return [
        Route("/openapi.json", spec, methods=["GET"], include_in_schema=False),
        Route("/docs", docs, methods=["GET"], include_in_schema=False),
        Route("/docs/docs.js", script, methods=["GET"], include_in_schema=False),
    ]


def _asset(name: str) -> str:
    return resources.files("turnstream.web").joinpath(name).read_text(encoding="utf-8")
