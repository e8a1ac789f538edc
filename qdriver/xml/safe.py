"""Parse untrusted XML safely.

Domain and snapshot XML come from users and from files other tools wrote, so
parsing refuses DTDs and entities (no billion laughs, no external entities),
never touches the network, and bounds size and depth.
"""
from __future__ import annotations

from typing import Iterator

from lxml import etree

from ..errors import XMLError

MAX_XML_BYTES = 4 << 20
"""Largest document accepted (libvirt's own domain XML is far smaller)."""

MAX_DEPTH = 64
"""Deepest element nesting accepted; libvirt's formats need about ten."""

Element = etree._Element


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=False,
                           remove_pis=True)


def parse(text: str | bytes, what: str = "document") -> Element:
    """Parse ``text`` into its root element or raise `XMLError`."""
    data = text.encode() if isinstance(text, str) else text
    if len(data) > MAX_XML_BYTES:
        raise XMLError(f"{what} is too large ({len(data)} bytes, limit {MAX_XML_BYTES})")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise XMLError(f"{what}: DTDs and entity declarations are not allowed")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        raise XMLError(f"malformed {what}: {e}") from None
    if _depth(root) > MAX_DEPTH:
        raise XMLError(f"{what} nests elements deeper than {MAX_DEPTH} levels")
    return root


def _depth(root: Element) -> int:
    deepest = 0
    stack: list[tuple[Element, int]] = [(root, 1)]
    while stack:
        el, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            break
        stack.extend((c, d + 1) for c in el if isinstance(c.tag, str))
    return deepest


def children(el: Element) -> Iterator[Element]:
    """Element children only (no comments)."""
    return (c for c in el if isinstance(c.tag, str))


def tostring(root: Element) -> str:
    """Serialise with libvirt-like two-space indentation."""
    root = etree.fromstring(etree.tostring(root), _parser())
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode") + "\n"


def new(tag: str, attrib: dict[str, str] | None = None, text: str | None = None) -> Element:
    """A fresh element."""
    el = etree.Element(tag, attrib or {})
    el.text = text
    return el


def sub(parent: Element, tag: str, attrib: dict[str, str] | None = None,
        text: str | None = None) -> Element:
    """A fresh child element appended to ``parent``."""
    el = etree.SubElement(parent, tag, attrib or {})
    el.text = text
    return el


def copy(el: Element) -> Element:
    """A deep copy, detached from its document."""
    return etree.fromstring(etree.tostring(el), _parser())
