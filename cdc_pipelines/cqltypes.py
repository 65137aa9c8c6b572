"""CQL type expressions: parsing ``map<text, frozen<list<int>>>`` into a small tree.

Every other module (DDL mapping, token computation, normalization) works on
:class:`CqlType`, never on the raw text, so a type is understood in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

SCALAR_TYPES = frozenset(
    {
        "ascii",
        "bigint",
        "blob",
        "boolean",
        "counter",
        "date",
        "decimal",
        "double",
        "duration",
        "float",
        "inet",
        "int",
        "smallint",
        "text",
        "time",
        "timestamp",
        "timeuuid",
        "tinyint",
        "uuid",
        "varchar",
        "varint",
    }
)
COLLECTION_ARITY = {"list": 1, "set": 1, "map": 2}
# "varchar" is an alias of "text" in CQL; the canonical name is used everywhere.
ALIASES = {"varchar": "text"}


@dataclass(frozen=True)
class CqlType:
    """A parsed CQL type.

    ``name`` is a scalar name, ``list``/``set``/``map``/``tuple``, or ``udt``
    (then ``udt_name`` names the user type, whose fields the declaration lists).
    ``frozen`` records an explicit ``frozen<…>`` wrapper.
    """

    name: str
    params: tuple[CqlType, ...] = ()
    frozen: bool = False
    udt_name: str | None = None

    @property
    def is_collection(self) -> bool:
        return self.name in COLLECTION_ARITY

    @property
    def is_scalar(self) -> bool:
        return self.name in SCALAR_TYPES

    def __str__(self) -> str:
        if self.name == "udt":
            inner = f"{self.udt_name}"
        elif self.params:
            inner = f"{self.name}<{', '.join(str(p) for p in self.params)}>"
        else:
            inner = self.name
        return f"frozen<{inner}>" if self.frozen else inner


class CqlTypeSyntaxError(ValueError):
    """The text is not a CQL type expression; the message says where and why."""


def parse_cql_type(text: str) -> CqlType:
    """Parse a CQL type expression; raises :class:`CqlTypeSyntaxError` with the reason."""
    parser = _Parser(text)
    result = parser.parse_type()
    parser.skip_spaces()
    if parser.pos != len(text):
        raise CqlTypeSyntaxError(
            f"unexpected {text[parser.pos :]!r} after the type {str(result)!r} in {text!r}"
        )
    return result


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def word(self) -> str:
        self.skip_spaces()
        start = self.pos
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            end = self.text.find('"', self.pos + 1)
            if end < 0:
                raise CqlTypeSyntaxError(f"unterminated quoted name in {self.text!r}")
            self.pos = end + 1
            return self.text[start + 1 : end]
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] in "_."
        ):
            self.pos += 1
        if start == self.pos:
            found = self.text[self.pos : self.pos + 1] or "end of text"
            raise CqlTypeSyntaxError(f"expected a type name at {found!r} in {self.text!r}")
        return self.text[start : self.pos].lower()

    def expect(self, char: str) -> None:
        self.skip_spaces()
        if self.pos >= len(self.text) or self.text[self.pos] != char:
            found = self.text[self.pos : self.pos + 1] or "end of text"
            raise CqlTypeSyntaxError(f"expected {char!r} but found {found!r} in {self.text!r}")
        self.pos += 1

    def peek(self) -> str:
        self.skip_spaces()
        return self.text[self.pos : self.pos + 1]

    def parse_params(self) -> tuple[CqlType, ...]:
        self.expect("<")
        params = [self.parse_type()]
        while self.peek() == ",":
            self.pos += 1
            params.append(self.parse_type())
        self.expect(">")
        return tuple(params)

    def parse_type(self) -> CqlType:
        name = self.word()
        if name == "frozen":
            (inner,) = self._exactly(self.parse_params(), 1, "frozen")
            return CqlType(inner.name, inner.params, True, inner.udt_name)
        if name in COLLECTION_ARITY:
            params = self._exactly(self.parse_params(), COLLECTION_ARITY[name], name)
            return CqlType(name, params)
        if name == "tuple":
            return CqlType("tuple", self.parse_params())
        if name in SCALAR_TYPES:
            if self.peek() == "<":
                raise CqlTypeSyntaxError(f"{name} takes no type parameters in {self.text!r}")
            return CqlType(ALIASES.get(name, name))
        if self.peek() == "<":
            raise CqlTypeSyntaxError(f"unknown parameterized type {name!r} in {self.text!r}")
        return CqlType("udt", udt_name=name)

    def _exactly(self, params: tuple[CqlType, ...], count: int, name: str) -> tuple[CqlType, ...]:
        if len(params) != count:
            raise CqlTypeSyntaxError(
                f"{name} takes {count} type parameter(s), got {len(params)} in {self.text!r}"
            )
        return params
