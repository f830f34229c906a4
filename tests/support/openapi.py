"""A service's OpenAPI document, and checks that real responses are what it describes."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

from flask import Flask
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to the given keys."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def app_routes(app: Flask, *, skip_endpoint_prefix: str = "static") -> set[tuple[str, str]]:
    """Every (path, method) the app serves, paths in OpenAPI's `{name}` syntax."""
    return {
        (re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if not rule.endpoint.startswith(skip_endpoint_prefix)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }


class OpenApiDocument:
    """The `openapi.json` a package ships, with its schemas ready to validate against."""

    def __init__(self, package: str) -> None:
        self.document: dict[str, Any] = json.loads(
            (resources.files(package) / "openapi.json").read_text(encoding="utf-8")
        )
        self.uri = f"urn:medsearch:{package}:openapi"
        # The whole document as one schema resource, so that its "#/components/..." references resolve.
        self.registry: Registry = Registry().with_resource(
            self.uri, DRAFT202012.create_resource(self.document)
        )

    def operations(self) -> set[tuple[str, str]]:
        """Every (path, method) the document describes."""
        return {
            (path, method)
            for path, item in self.document["paths"].items()
            for method in item
            if method in HTTP_METHODS
        }

    def resolved(self, node: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
        """`node` (found at the pointer `where`) with its `$ref` followed, and where it really is."""
        if "$ref" not in node:
            return node, where
        target = node["$ref"].removeprefix("#")
        contents: dict[str, Any] = self.registry.resolver().lookup(f"{self.uri}#{target}").contents
        return contents, target

    def schema_errors(self, ref: str, instance: Any) -> list[str]:
        """Why `instance` fails the schema at `ref` (a pointer into the document), as readable lines."""
        validator = Draft202012Validator(
            {"$ref": f"{self.uri}#{ref}"},
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(instance)
        ]

    def check(self, response: TestResponse, path: str, method: str) -> Any:
        """Assert the document describes this real response (status, type, headers, body); return the body."""
        responses = self.document["paths"][path][method]["responses"]
        status = str(response.status_code)
        assert status in responses, (
            f"{method.upper()} {path} answered {status}, which the document does not list"
        )
        described, where = self.resolved(
            responses[status], pointer("paths", path, method, "responses", status)
        )
        for name, header in described.get("headers", {}).items():
            header, header_at = self.resolved(header, where + pointer("headers", name))
            if name not in response.headers:
                assert not header.get("required"), f"{status} lacks the required header {name}"
                continue
            errors = self.schema_errors(header_at + "/schema", response.headers[name])
            assert not errors, f"header {name} of {status} does not match the document: {errors}"
        content = described.get("content", {})
        if not content:
            assert response.data == b"", f"{status} is documented without a body"
            return None
        mimetype = response.mimetype or ""
        assert mimetype in content, f"{mimetype!r} is not among {sorted(content)} for {status}"
        if not mimetype.endswith("json"):
            return response.data
        body = response.json
        errors = self.schema_errors(where + pointer("content", mimetype, "schema"), body)
        lines = "\n".join(errors)
        assert not errors, f"{method.upper()} {path} {status} does not match the document:\n{lines}"
        if mimetype == "application/problem+json":
            assert body["status"] == response.status_code  # type: ignore[index]
        return body

    def plain_problem(self, response: TestResponse) -> dict[str, Any]:
        """For the answers the document states in words only (an unknown path, a method a path lacks)."""
        assert response.mimetype == "application/problem+json"
        body: dict[str, Any] = response.json  # type: ignore[assignment]
        errors = self.schema_errors("/components/schemas/Problem", body)
        assert not errors, errors
        assert body["status"] == response.status_code and body["type"] == "about:blank"
        return body
