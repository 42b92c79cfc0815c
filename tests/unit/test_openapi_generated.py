"""cdp/api/openapi.json is what cdp/api/openapi.py generates from the models.

The document is committed (tools, readers and tests open the file); its
``components.schemas`` come from the msgspec models of cdp/api/schemas.py and
cdp/events.py, its paths from cdp/api/openapi.template.json. What it says is checked
against the server by tests/unit/test_contract.py and
tests/integration/test_openapi_conformance.py.
"""

from __future__ import annotations

import difflib
from typing import Any

import msgspec
import pytest

from cdp.api import openapi
from cdp.api.openapi import MODELS
from cdp.api.schemas import NAMED
from cdp.events import IngestEvent


def test_the_committed_document_is_the_generated_one() -> None:
    expected = openapi.render(openapi.build())
    committed = openapi.DOCUMENT_PATH.read_text()
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(), expected.splitlines(), "committed", "generated", lineterm=""
        )
        shown = "\n".join(list(diff)[:40])
        pytest.fail(f"cdp/api/openapi.json is stale: run {openapi.COMMAND}\n{shown}")


def test_every_model_is_a_schema_and_every_schema_is_used() -> None:
    document = openapi.build()
    schemas = document["components"]["schemas"]
    assert {m.__name__ for m in MODELS} | set(NAMED) <= set(schemas)
    prefix = "#/components/schemas/"
    used = {r.removeprefix(prefix) for r in openapi.refs(document) if r.startswith(prefix)}
    # CallCommon is the shared part of the call Structs (each repeats its fields).
    assert set(schemas) - used == {"CallCommon"}


def test_the_ingest_body_is_the_decoders_struct() -> None:
    """The schema of POST /cdp/ingest is made from the Struct that decodes it."""
    (schema,), _ = msgspec.json.schema_components([IngestEvent], ref_template="{name}")
    assert schema == {"$ref": "IngestEvent"}
    ingest = openapi.build()["components"]["schemas"]["IngestEvent"]
    assert ingest["required"] == ["eventId", "ts", "payload"]
    assert ingest["properties"]["ts"] == {"$ref": "#/components/schemas/EventTime"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, {"type": "string", "nullable": True}),
        (
            {"anyOf": [{"$ref": "#/x"}, {"type": "null"}], "description": "d"},
            {"description": "d", "nullable": True, "allOf": [{"$ref": "#/x"}]},
        ),
        (
            {"anyOf": [{"$ref": "#/x"}, {"type": "number"}, {"type": "null"}]},
            {"anyOf": [{"$ref": "#/x"}, {"type": "number", "nullable": True}]},
        ),
        ({"$ref": "#/x", "type": "string", "description": "d"}, {"$ref": "#/x"}),
        ({"title": "T", "required": [], "default": None}, {}),
        ({"enum": ["a", "b"]}, {"type": "string", "enum": ["a", "b"]}),
        ({"enum": [0, -1]}, {"enum": [0, -1]}),
        ({"description": "one\nline\n\nnext"}, {"description": "one line\n\nnext"}),
    ],
)
def test_json_schema_becomes_openapi_30(given: dict[str, Any], expected: dict[str, Any]) -> None:
    assert openapi.openapi_30(given) == expected


def test_a_reference_to_no_schema_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = openapi.schemas()
    monkeypatch.setattr(openapi, "schemas", lambda: {k: v for k, v in real.items() if k != "Job"})
    with pytest.raises(openapi.SchemaError, match="Job names no schema"):
        openapi.build()


def test_check_says_which_command_fixes_a_stale_document(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(openapi, "DOCUMENT_PATH", stale)
    assert openapi.main(["--check"]) == 1
    assert "python -m cdp.api.openapi --write" in capsys.readouterr().err
    assert openapi.main(["--write"]) == 0
    assert openapi.main(["--check"]) == 0
    assert stale.read_text() == openapi.render(openapi.build())
