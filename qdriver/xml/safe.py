"""Parse untrusted XML safely.

Domain and snapshot XML come from users and from files other tools wrote, so
parsing refuses DTDs and entities (no billion laughs, no external entities),
never touches the network, and bounds size and depth.
"""
from __future__ import annotations

from contextlib import contextmanager
from copy import deepcopy
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
    except (etree.XMLSyntaxError, ValueError) as e:
        raise XMLError(f"malformed {what}: {e}") from e
    # the byte check above misses declarations in UTF-16 or UTF-32: ask the parse
    docinfo = root.getroottree().docinfo
    if getattr(docinfo, "doctype", "") or docinfo.internalDTD is not None \
            or next(root.iter(etree.Entity), None) is not None:
        raise XMLError(f"{what}: DTDs and entity declarations are not allowed")
    if _depth(root) > MAX_DEPTH:
        raise XMLError(f"{what} nests elements deeper than {MAX_DEPTH} levels")
    return root


def check_storable(text: str, what: str) -> str:
    """``text`` if `parse` will take it back, else `XMLError` (checked before storing:
    escaping can make the stored form much larger than what the user gave)."""
    size = len(text.encode())
    if size > MAX_XML_BYTES:
        raise XMLError(f"{what} would be stored as {size} bytes, over the {MAX_XML_BYTES} "
                       "bytes that reading it back accepts")
    return text


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
    """Serialise the way libvirt does: two-space indent, single-quoted attributes."""
    lines: list[str] = []
    parent = root.getparent()
    _format(root, 0, lines, parent.nsmap if parent is not None else {}, _namespaced(root))
    return "\n".join(lines) + "\n"


def _namespaced(root: Element) -> bool:
    """Whether any element or attribute below ``root`` has a namespace (most of
    libvirt's XML has none, and then no element needs its namespace map)."""
    return any(el.tag[0] == "{" or any(k[0] == "{" for k in el.attrib)
               for el in root.iter() if isinstance(el.tag, str))


def _escape(text: str, quote: bool = False) -> str:
    if "&" in text or "<" in text or ">" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("'", "&apos;") if quote and "'" in text else text


def _format(el: Element, depth: int, lines: list[str], inherited: dict[str | None, str],
            namespaced: bool) -> None:
    pad = "  " * depth
    if not isinstance(el.tag, str):
        lines.append(f"{pad}<!--{el.text or ''}-->")
        return
    attrib = el.attrib
    if namespaced or depth == 0:
        nsmap = el.nsmap  # lxml builds this dict anew on each access: once per element
        tag = _qname(nsmap, el.tag)
        attrs = "".join(f" xmlns{':' + p if p else ''}='{_escape(u, True)}'"
                        for p, u in nsmap.items() if inherited.get(p) != u)
        attrs += "".join(f" {_qname(nsmap, str(k))}='{_escape(str(v), True)}'"
                         for k, v in attrib.items())
    else:  # no namespace below the root: nothing to declare or prefix
        nsmap, tag = inherited, el.tag
        attrs = "".join(f" {k!s}='{_escape(str(v), True)}'" for k, v in attrib.items())
    kids = [c for c in el if isinstance(c.tag, str) or isinstance(c, etree._Comment)]
    text = (el.text or "").strip() if kids else (el.text or "")
    if not kids and not text.strip():
        lines.append(f"{pad}<{tag}{attrs}/>")
    elif not kids:
        lines.append(f"{pad}<{tag}{attrs}>{_escape(text)}</{tag}>")
    else:
        lines.append(f"{pad}<{tag}{attrs}>" + (_escape(text) if text else ""))
        for child in kids:
            _format(child, depth + 1, lines, nsmap, namespaced)
        lines.append(f"{pad}</{tag}>")


def _qname(nsmap: dict[str | None, str], name: str) -> str:
    """``{uri}local`` written with the prefix in scope for ``uri``."""
    if not name.startswith("{"):
        return name
    uri, local = name[1:].split("}", 1)
    prefix = next((p for p, u in nsmap.items() if u == uri), None)
    return f"{prefix}:{local}" if prefix else local


def written_name(el: Element) -> str:
    """An element's name as the document writes it (``qemu:commandline``), for
    messages: never the ``{namespace-uri}name`` form."""
    return _qname(dict(el.nsmap), el.tag) if isinstance(el.tag, str) else str(el.tag)


def new(tag: str, attrib: dict[str, str] | None = None, text: str | None = None) -> Element:
    """A fresh element; `XMLError` names a value XML cannot hold (a control character)."""
    with _xml_values(tag, attrib, text):
        el = etree.Element(tag, attrib or {})
        el.text = text
    return el


def sub(parent: Element, tag: str, attrib: dict[str, str] | None = None,
        text: str | None = None) -> Element:
    """A fresh child element appended to ``parent`` (values checked as in `new`)."""
    with _xml_values(tag, attrib, text):
        el = etree.Element(tag, attrib or {})
        el.text = text
    parent.append(el)
    return el


def set_value(el: Element, name: str, value: str) -> None:
    """Set an attribute (values checked as in `new`)."""
    with _xml_values(str(el.tag), {name: value}, None):
        el.set(name, value)


@contextmanager
def _xml_values(tag: str, attrib: dict[str, str] | None, text: str | None) -> Iterator[None]:
    try:
        yield
    except ValueError as e:
        bad = [f"{tag} {k}={v!r}" for k, v in (attrib or {}).items() if not _xml_ok(v)]
        if text is not None and not _xml_ok(text):
            bad.append(f"<{tag}> text {text!r}")
        raise XMLError(f"invalid character in {', '.join(bad) or tag}: XML cannot hold "
                       "control characters") from e


def _xml_ok(value: str) -> bool:
    return all(c in "\t\n\r" or ord(c) >= 0x20 for c in value) and \
        not any(0xD800 <= ord(c) <= 0xDFFF or ord(c) in (0xFFFE, 0xFFFF) for c in value)


def copy(el: Element) -> Element:
    """A deep copy, detached from its document (and from its tail text)."""
    dup = deepcopy(el)
    dup.tail = None
    return dup
