"""Parse a Gadgetron version-2 XML protocol into the steps replay can run.

Replay runs only what needs no Gadgetron C++ runtime: external Python gadgets
started with ``<execute type="python">``, optionally split over a
``<parallel>`` block (``AcquisitionFanout`` branch, ``UnorderedMerge`` merge).
Anything else is a :class:`~recon_plugin.errors.ProtocolError` that says the
protocol must run on a Gadgetron server.

Accepted root elements: ``<configuration>`` (what Gadgetron 4 ships) and
``<gadgetron>``; both must hold ``<version>2</version>`` and a ``<stream>``.
"""

from __future__ import annotations

import difflib
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ProtocolError

logger = logging.getLogger(__name__)

CORE_READERS_DLL = "gadgetron_core_readers"
CORE_WRITERS_DLL = "gadgetron_core_writers"
CORE_PARALLEL_DLL = "gadgetron_core_parallel"
SUPPORTED_READERS = frozenset({"AcquisitionReader", "WaveformReader"})
SUPPORTED_WRITERS = frozenset({"ImageWriter"})
SUPPORTED_BRANCHES = frozenset({"AcquisitionFanout"})
SUPPORTED_MERGES = frozenset({"UnorderedMerge"})
#: Gadgetron's other core readers and writers: real names, which need the server, never typos.
OTHER_CORE_IO = frozenset(
    {
        "AcquisitionBucketReader",
        "BufferReader",
        "ImageReader",
        "IsmrmrdImageArrayReader",
        "TextReader",
        "AcquisitionBucketWriter",
        "AcquisitionWriter",
        "BufferWriter",
        "IsmrmrdImageArrayWriter",
        "TextWriter",
        "WaveformWriter",
    }
)

#: What Gadgetron sends as CONFIG when an ``<external>`` has no (or an empty) ``<configuration>``.
EMPTY_CONFIG_XML = b'<?xml version="1.0"?>\n<configuration />\n'

_NEEDS_SERVER = "this protocol needs Gadgetron's C++ runtime: run it on a Gadgetron server"


@dataclass(frozen=True)
class ExternalStep:
    """One ``<external>`` Python gadget: ``python -m gadgetron PORT module target``."""

    module: str
    target: str
    config_xml: bytes = EMPTY_CONFIG_XML
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``module.target``, for messages."""
        return f"{self.module}.{self.target}"


@dataclass(frozen=True)
class ParallelStep:
    """A ``<parallel>`` block: acquisitions fan out to every named sub-stream, outputs merge unordered."""

    streams: dict[str, list[Step]]
    branch: str = "AcquisitionFanout"
    merge: str = "UnorderedMerge"


Step = ExternalStep | ParallelStep


@dataclass(frozen=True)
class Protocol:
    """A parsed version-2 protocol: reader and writer classnames and the stream's steps; ``overrides``: the
    properties set on top of the file (:func:`set_gadget_property`), as ``module.target: name=value``."""

    path: Path | None
    readers: list[str]
    writers: list[str]
    steps: list[Step]
    overrides: tuple[str, ...] = ()


def load_protocol(source: str | Path | bytes) -> Protocol:
    """Parse a protocol from a file path or from XML bytes.

    Raises:
        ProtocolError: unreadable or malformed XML, wrong version, no stream, or
            parts replay cannot run (C++ gadgets, ``<connect>``, non-Python externals).
    """
    path: Path | None = None
    if isinstance(source, bytes):
        text = source
    else:
        path = Path(source)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ProtocolError(f"cannot read protocol {path}: {exc.strerror or exc}") from exc
    where = str(path) if path else "protocol"
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ProtocolError(f"{where} is not well-formed XML: {exc}") from exc
    return _parse_root(root, path, where)


def _parse_root(root: ET.Element, path: Path | None, where: str) -> Protocol:
    if root.tag == "gadgetronStreamConfiguration" or root.tag.endswith("}gadgetronStreamConfiguration"):
        raise ProtocolError(f"{where} is a Gadgetron version-1 protocol; replay reads version 2 only ({_NEEDS_SERVER})")
    if root.tag not in ("configuration", "gadgetron"):
        raise ProtocolError(f"{where}: root element <{root.tag}> is not a Gadgetron protocol (<configuration>)")
    version = _text(root, "version")
    if version is None:
        raise ProtocolError(f"{where} has no <version>; replay reads version-2 protocols")
    if version != "2":
        raise ProtocolError(f"{where} is protocol version {version!r}; replay reads version 2 only")
    stream = root.find("stream")
    if stream is None:
        raise ProtocolError(f"{where} has no <stream>")
    for child in root:
        if child.tag not in ("version", "readers", "writers", "stream"):
            logger.warning("%s: ignoring top-level element <%s>", where, child.tag)
    readers = _parse_io(root.find("readers"), "reader", CORE_READERS_DLL, SUPPORTED_READERS, where)
    writers = _parse_io(root.find("writers"), "writer", CORE_WRITERS_DLL, SUPPORTED_WRITERS, where)
    steps = _parse_stream(stream, f"{where}: <stream>")
    return Protocol(path=path, readers=readers, writers=writers, steps=steps)


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _parse_io(node: ET.Element | None, tag: str, dll: str, allowed: frozenset[str], where: str) -> list[str]:
    """Reader or writer classnames; each must be one of Gadgetron's core ones replay implements."""
    if node is None:
        return []
    names = []
    for child in node:
        if child.tag != tag:
            raise ProtocolError(f"{where}: unexpected <{child.tag}> inside <{node.tag}>")
        classname = _text(child, "classname") or ""
        child_dll = _text(child, "dll") or ""
        typo = _did_you_mean(classname, allowed) or _did_you_mean(child_dll, {dll})
        if typo:
            raise ProtocolError(f"{where}: {tag} {classname or '?'} ({child_dll or 'no dll'}): {typo}")
        if classname not in allowed or child_dll != dll:
            raise ProtocolError(
                f"{where}: {tag} {classname or '?'} ({child_dll or 'no dll'}) is not one replay implements "
                f"(supported: {', '.join(sorted(allowed))} from {dll}); {_NEEDS_SERVER}"
            )
        names.append(classname)
    return names


def _did_you_mean(name: str, known: frozenset[str] | set[str]) -> str:
    """``did you mean AcquisitionReader?`` when ``name`` is unknown but close to a known name, else ``""``."""
    if not name or name in known or name in OTHER_CORE_IO:
        return ""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return f"unknown name {name!r}, did you mean {close[0]}?" if close else ""


def _parse_stream(node: ET.Element, where: str) -> list[Step]:
    steps: list[Step] = []
    for child in node:
        if child.tag == "external":
            steps.append(_parse_external(child, where))
        elif child.tag == "parallel":
            steps.append(_parse_parallel(child, where))
        elif child.tag == "gadget":
            name = _text(child, "classname") or _text(child, "name") or "?"
            dll = _text(child, "dll") or "no dll"
            raise ProtocolError(f"{where}: <gadget> {name} ({dll}) is a Gadgetron C++ gadget; {_NEEDS_SERVER}")
        else:
            raise ProtocolError(f"{where}: element <{child.tag}> is not supported by replay; {_NEEDS_SERVER}")
    if not steps:
        raise ProtocolError(f"{where} has no steps")
    return steps


def _parse_external(node: ET.Element, where: str) -> ExternalStep:
    if node.find("connect") is not None:
        connect = node.find("connect")
        assert connect is not None
        address = f"{connect.get('address', '?')}:{connect.get('port', '?')}"
        raise ProtocolError(
            f"{where}: <external><connect> to {address} attaches to an already running process, which replay "
            f"cannot start; {_NEEDS_SERVER}"
        )
    execute = node.find("execute")
    if execute is None:
        raise ProtocolError(f"{where}: <external> has neither <execute> nor <connect>")
    module, target, kind = execute.get("name"), execute.get("target"), execute.get("type")
    if kind != "python":
        raise ProtocolError(
            f"{where}: <external><execute name={module!r} type={kind!r}> is not a Python gadget; {_NEEDS_SERVER}"
        )
    if not module or not target:
        raise ProtocolError(f"{where}: <external><execute> needs both name (module) and target")
    config = node.find("configuration")
    properties: dict[str, str] = {}
    if config is not None:
        for prop in config.iter("property"):
            name = prop.get("name")
            if name is None:
                raise ProtocolError(f"{where}: <external> {module}.{target} has a <property> without a name")
            properties[name] = prop.get("value", "")
    return ExternalStep(module=module, target=target, config_xml=serialize_configuration(config), properties=properties)


def _parse_parallel(node: ET.Element, where: str) -> ParallelStep:
    branch = _core_parallel_part(node, "branch", SUPPORTED_BRANCHES, where)
    merge = _core_parallel_part(node, "merge", SUPPORTED_MERGES, where)
    streams: dict[str, list[Step]] = {}
    for child in node:
        if child.tag in ("branch", "merge"):
            continue
        if child.tag != "stream":
            raise ProtocolError(f"{where}: <parallel> holds <{child.tag}>; expected <branch>, <stream>, <merge>")
        key = child.get("key")
        if not key:
            raise ProtocolError(f"{where}: <parallel><stream> needs a key attribute")
        if key in streams:
            raise ProtocolError(f"{where}: <parallel> has two streams with key {key!r}")
        streams[key] = _parse_stream(child, f"{where} <parallel><stream key={key!r}>")
    if not streams:
        raise ProtocolError(f"{where}: <parallel> has no <stream key=...> branches")
    return ParallelStep(streams=streams, branch=branch, merge=merge)


def _core_parallel_part(node: ET.Element, tag: str, allowed: frozenset[str], where: str) -> str:
    part = node.find(tag)
    if part is None:
        raise ProtocolError(f"{where}: <parallel> has no <{tag}>")
    classname = _text(part, "classname") or ""
    dll = _text(part, "dll") or ""
    if classname not in allowed or dll != CORE_PARALLEL_DLL:
        raise ProtocolError(
            f"{where}: <parallel><{tag}> {classname or '?'} ({dll or 'no dll'}) is not supported by replay "
            f"(supported: {', '.join(sorted(allowed))} from {CORE_PARALLEL_DLL}); {_NEEDS_SERVER}"
        )
    return classname


def set_gadget_property(protocol: Protocol, module: str, target: str, name: str, value: str) -> Protocol:
    """A copy of ``protocol`` whose every ``module.target`` gadget has property ``name`` = ``value`` (replaced
    when the file sets it, added otherwise), in its parsed properties and in the CONFIG text it is sent.

    Raises:
        ProtocolError: the protocol has no such gadget (nothing would be set).
    """
    found = 0

    def visit(steps: list[Step]) -> list[Step]:
        nonlocal found
        out: list[Step] = []
        for step in steps:
            if isinstance(step, ParallelStep):
                out.append(replace(step, streams={key: visit(branch) for key, branch in step.streams.items()}))
            elif step.module == module and step.target == target:
                found += 1
                out.append(_with_property(step, name, value))
            else:
                out.append(step)
        return out

    steps = visit(protocol.steps)
    if not found:
        where = protocol.path or "the protocol"
        raise ProtocolError(f"{where} has no {module}.{target} gadget to set {name}={value} on")
    return replace(protocol, steps=steps, overrides=(*protocol.overrides, f"{module}.{target}: {name}={value}"))


def _with_property(step: ExternalStep, name: str, value: str) -> ExternalStep:
    config = ET.fromstring(step.config_xml)
    props = [p for p in config.iter("property") if p.get("name") == name]
    if props:
        for prop in props:
            prop.set("value", value)
    else:
        ET.SubElement(config, "property", {"name": name, "value": value})
    return replace(step, config_xml=serialize_configuration(config), properties={**step.properties, name: value})


def serialize_configuration(config: ET.Element | None) -> bytes:
    """Re-serialise an ``<external>``'s ``<configuration>`` the way Gadgetron sends it (tab-indented)."""
    if config is None or (len(config) == 0 and not config.attrib and not (config.text or "").strip()):
        return EMPTY_CONFIG_XML
    lines: list[str] = []
    _print_node(config, 0, lines)
    return "".join(lines).encode("utf-8")


def _print_node(node: ET.Element, depth: int, out: list[str]) -> None:
    indent = "\t" * depth
    attrs = "".join(f' {name}="{_escape(value, attribute=True)}"' for name, value in node.attrib.items())
    text = (node.text or "").strip()
    if len(node) == 0 and not text:
        out.append(f"{indent}<{node.tag}{attrs} />\n")
    elif len(node) == 0:
        out.append(f"{indent}<{node.tag}{attrs}>{_escape(text)}</{node.tag}>\n")
    else:
        out.append(f"{indent}<{node.tag}{attrs}>\n")
        if text:
            out.append(f"{indent}\t{_escape(text)}\n")
        for child in node:
            _print_node(child, depth + 1, out)
        out.append(f"{indent}</{node.tag}>\n")


def _escape(value: str, *, attribute: bool = False) -> str:
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        value = value.replace('"', "&quot;")
        value = "".join(f"&#{ord(c)};" if ord(c) < 32 else c for c in value)
    return value
