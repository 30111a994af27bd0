"""function_tool: JSON Schema and description derived from a typed signature; one-line validation."""
from __future__ import annotations

import asyncio
import enum
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from hiclaw import hookimpl
from hiclaw.agent.arguments import argument_problems
from hiclaw.agent.functions import function_tool, parse_docstring, schema_hint
from hiclaw.errors import InvalidInputError
from hiclaw.host import ComponentContext


class Color(str, enum.Enum):
    """Colours (a docstring for Python readers, not shown to the model)."""

    RED = "red"
    BLUE = "blue"


class Item(BaseModel):
    """An item."""

    id: Annotated[str, Field(pattern="^x-[0-9]+$")] | None = None
    title: str
    tags: list[str] | None = None


calls: list[dict] = []


@function_tool
async def demo(name: Annotated[str, Field(description="the name", pattern="^[a-z]+$")], items: list[Item],
               color: Color = Color.RED, mode: Literal["a", "b"] | None = None, limit: int | None = None,
               labels: dict[str, str] | None = None, either: int | str = 3,
               budget: Annotated[float, schema_hint(minimum=0)] | None = None) -> str:
    """Do a demo
    thing.

    More for Python readers.

    Args:
        items: the items,
            each an object
        color: a colour
    """
    calls.append({"name": name, "items": items, "color": color, "budget": budget})
    return "done"


def test_schema_of_each_annotation_kind():
    p = demo.parameters
    assert p["type"] == "object" and p["additionalProperties"] is False and p["required"] == ["name", "items"]
    props = p["properties"]
    assert props["name"] == {"type": "string", "description": "the name", "pattern": "^[a-z]+$"}
    assert props["items"]["description"] == "the items, each an object"
    assert props["items"]["type"] == "array"
    assert props["items"]["items"] == {"type": "object", "additionalProperties": False, "required": ["title"],
                                       "properties": {"id": {"type": "string", "pattern": "^x-[0-9]+$"},
                                                      "title": {"type": "string"},
                                                      "tags": {"type": "array", "items": {"type": "string"}}}}
    assert props["color"] == {"type": "string", "enum": ["red", "blue"], "description": "a colour"}
    assert props["mode"] == {"type": "string", "enum": ["a", "b"]}
    assert props["limit"] == {"type": "integer"}
    assert props["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["either"] == {"type": ["integer", "string"]}
    assert props["budget"] == {"type": "number", "minimum": 0}
    assert "$defs" not in str(p) and "title" not in p and "default" not in str(p)


def test_description_from_the_first_paragraph():
    assert demo.description == "Do a demo thing."
    assert parse_docstring("One.\n\nArgs:\n    a: first\n    b (int): second\n        more\n\nReturns:\n    x") == (
        "One.", {"a": "first", "b": "second more"})


def test_typed_call_and_one_line_validation():
    calls.clear()
    assert asyncio.run(demo.handler({"name": "abc", "items": [{"title": "t", "id": "x-1"}], "color": "blue"})) == "done"
    (call,) = calls
    assert call["items"] == [Item(id="x-1", title="t")] and call["color"] is Color.BLUE and call["budget"] is None
    for bad, line in [({"items": [{"id": 3}]}, "name: required; items[0].title: required; items[0].id: must be string"),
                      ({"name": "ABC", "items": []}, "name: string should match pattern"),
                      ({"name": "a", "items": [], "labels": {"k": 1}}, "labels.k: must be string, got a number"),
                      ({"name": "a", "items": [], "budget": -1}, None)]:
        calls.clear()
        if line is None:  # a hint is shown, not enforced: the tool's own code checks it
            asyncio.run(demo.handler(bad))
            assert calls
            continue
        with pytest.raises(InvalidInputError) as caught:
            asyncio.run(demo.handler(bad))
        assert line in str(caught.value) and "\n" not in str(caught.value) and calls == []
    # the loop's pre-check says the same about shape
    assert argument_problems(demo.parameters, {"name": "a", "items": [], "labels": {"k": 1}}) == (
        "labels.k: must be string, got a number")


def test_refused_signatures_name_the_tool():
    class A(BaseModel):
        a: int

    class B(BaseModel):
        b: int

    async def no_doc(x: int) -> None:
        pass

    async def union(x: A | B) -> None:
        """Union."""

    with pytest.raises(TypeError, match="tool no_doc: give it a docstring"):
        function_tool(no_doc)
    with pytest.raises(TypeError, match="tool union: a union"):
        function_tool(union)


def test_a_typed_plugin_tool_through_the_hook(plugin_host, tmp_path):
    got: list[tuple[int, list[str]]] = []

    class Plugin:
        @hookimpl
        def hiclaw_register_tools(self, register):
            def factory(ctx):
                def double(x: int, tags: list[str] | None = None) -> int:
                    """Double x."""
                    got.append((x, tags or []))
                    return x * 2

                return function_tool(double)

            register("doubler", factory)

    host = plugin_host(("p", Plugin()))
    (tool,) = host.tools(ComponentContext(home=tmp_path, side="worker"))
    assert tool.openai_schema()["function"]["parameters"]["required"] == ["x"]
    assert asyncio.run(tool.handler({"x": 4, "tags": ["a"]})) == 8 and got == [(4, ["a"])]
