"""Reads msg/*.msg and srv/*.srv the way rosidl does, for the interface tests.

Only the subset the package uses: fields (`type name [default]`), constants (`TYPE NAME=value`),
comments, unbounded/bounded/fixed arrays and bounded strings.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "segfast_ros"

# The names rosidl's Python classes report in get_fields_and_field_types().
_PRIMITIVES = {
    "bool": "boolean",
    "byte": "octet",
    "char": "uint8",
    "float32": "float",
    "float64": "double",
    "string": "string",
    "wstring": "wstring",
    **{f"{s}int{n}": f"{s}int{n}" for s in ("", "u") for n in (8, 16, 32, 64)},
}
_ARRAY = re.compile(r"^(?P<base>[^\[]+)(?:\[(?P<bound><=)?(?P<size>\d*)\])?$")


def _element_type(base: str) -> str:
    bounded_string = re.fullmatch(r"(w?string)<=(\d+)", base)
    if bounded_string:
        return f"{bounded_string[1]}<{bounded_string[2]}>"
    if base in _PRIMITIVES:
        return _PRIMITIVES[base]
    return base if "/" in base else f"{PACKAGE}/{base}"


def field_type(msg_type: str) -> str:
    """`float32[]` -> `sequence<float>`, `Instance[]` -> `sequence<segfast_ros/Instance>`."""
    match = _ARRAY.match(msg_type)
    if match is None:
        raise ValueError(f"cannot read type {msg_type!r}")
    element = _element_type(match["base"])
    if match.group(0) == match["base"]:
        return element
    if match["bound"]:
        return f"sequence<{element}, {match['size']}>"
    if match["size"]:
        return f"{element}[{match['size']}]"
    return f"sequence<{element}>"


def parse_fields(text: str) -> dict[str, str]:
    """Field name -> rosidl type name, in declaration order; constants are left out."""
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        msg_type, rest = line.split(None, 1)
        name = rest.split(None, 1)[0]
        if "=" in name:  # a constant: TYPE NAME=value
            continue
        fields[name] = field_type(msg_type)
    return fields


def interface_files() -> dict[str, Path]:
    """`msg/Instance` -> its file, for every message and service of the package."""
    files = sorted((REPO / "msg").glob("*.msg")) + sorted((REPO / "srv").glob("*.srv"))
    return {f"{path.parent.name}/{path.stem}": path for path in files}


def expected_fields(path: Path) -> dict[str, dict[str, str]]:
    """{'': fields} for a message; {'Request': ..., 'Response': ...} for a service."""
    text = path.read_text()
    if path.suffix == ".msg":
        return {"": parse_fields(text)}
    request, response = re.split(r"^---\s*$", text, maxsplit=1, flags=re.MULTILINE)
    return {"Request": parse_fields(request), "Response": parse_fields(response)}


def referenced_packages() -> set[str]:
    """Packages whose types the interfaces use (`std_msgs/Header` -> std_msgs)."""
    packages: set[str] = set()
    for path in interface_files().values():
        for fields in expected_fields(path).values():
            for type_name in fields.values():
                match = re.search(r"([A-Za-z0-9_]+)/[A-Za-z0-9_]+", type_name)
                if match and match[1] != PACKAGE:
                    packages.add(match[1])
    return packages
