"""``recon-plugin protocols list | path | install`` (registered by recon_plugin.cli): the packaged protocols.

The protocol XMLs ship inside the package (:data:`recon_plugin.sample_data.PROTOCOLS_DIR`); ``install``
copies them into a Gadgetron server's configuration folder (``$GADGETRON_HOME/share/gadgetron/config``),
where ``gadgetron_ismrmrd_client -c NAME.xml`` finds them.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from .console import error_line
from .sample_data import DEFAULT_BUNDLES, DEVICE_CLASSES, PROTOCOLS_DIR, WEIGHTS_DIR

protocols_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The packaged Gadgetron protocols: list them, print one's path, install them into a Gadgetron server.",
)


@dataclass(frozen=True)
class PackagedProtocol:
    """One protocol XML: its name (file name without ``.xml``), path, gadget targets and first comment line."""

    name: str
    path: Path
    targets: tuple[str, ...]
    description: str


def _first_clause(text: str) -> str:
    """``text`` up to its first sentence end or semicolon outside parentheses."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char in ".;" and text[i + 1 : i + 2] in (" ", ""):
            return text[: i + 1] if char == "." else text[:i]
    return text


def _describe(path: Path) -> tuple[tuple[str, ...], str]:
    """(gadget targets, first sentence of the leading comment without its ``name:`` prefix) of a protocol."""
    text = path.read_text(encoding="utf-8")
    comment = re.search(r"<!--(.*?)-->", text, re.DOTALL)
    description = " ".join(comment.group(1).split()) if comment else ""
    description = re.sub(rf"^{re.escape(path.stem)}\s*:\s*", "", description)
    description = _first_clause(description)
    try:
        targets = tuple(e.get("target", "?") for e in ET.fromstring(text).iter("execute"))
    except ET.ParseError:
        targets = ("(not valid XML)",)
    return targets, description


def packaged_protocols(folder: Path = PROTOCOLS_DIR) -> list[PackagedProtocol]:
    """The protocols in ``folder`` (default: the packaged ones), sorted by name."""
    return [PackagedProtocol(p.stem, p, *_describe(p)) for p in sorted(Path(folder).glob("*.xml"))]


def resolve_protocol(spec: str | Path, folder: Path = PROTOCOLS_DIR) -> Path:
    """A protocol file: ``spec`` itself when it is a file, else the packaged protocol of that name (``side_by_side``
    or ``side_by_side.xml``). Neither is a ProtocolError that lists the packaged names (with did-you-mean)."""
    import difflib

    from .errors import ProtocolError

    path = Path(spec)
    if path.is_file():
        return path
    name = path.name.removesuffix(".xml")
    packaged = {p.name: p.path for p in packaged_protocols(folder)}
    if str(path.parent) in ("", ".") and name in packaged:
        return packaged[name]
    close = difflib.get_close_matches(name, list(packaged), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ProtocolError(
        f"no protocol file {spec} and no packaged protocol of that name{hint}; packaged: {', '.join(packaged)}"
    )


def install_protocols(dest: Path, *, force: bool = False, folder: Path = PROTOCOLS_DIR) -> list[tuple[str, Path]]:
    """Copy the protocols of ``folder`` into the existing folder ``dest``; returns (action, target) per file,
    action ``installed``, ``unchanged`` (identical already) or ``replaced`` (differed; only with ``force``).

    Raises:
        FileNotFoundError: ``dest`` is not a folder.
        FileExistsError: a file in ``dest`` differs from the packaged one and ``force`` is off; nothing is copied.
    """
    dest = Path(dest)
    if not dest.is_dir():
        raise FileNotFoundError(f"{dest} is not a folder (create it first, or check $GADGETRON_HOME)")
    plan = []
    for protocol in packaged_protocols(folder):
        target = dest / protocol.path.name
        if not target.exists():
            plan.append(("installed", protocol.path, target))
        elif target.is_file() and filecmp.cmp(protocol.path, target, shallow=False):
            plan.append(("unchanged", protocol.path, target))
        else:
            plan.append(("replaced", protocol.path, target))
    changed = [str(target) for action, _, target in plan if action == "replaced"]
    if changed and not force:
        raise FileExistsError(
            f"{', '.join(changed)} differ{'s' if len(changed) == 1 else ''} from the packaged protocol; nothing was "
            "copied (--force overwrites)"
        )
    for action, source, target in plan:
        if action != "unchanged":
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=dest)
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return [(action, target) for action, _, target in plan]


def _fail(exc: Exception) -> NoReturn:
    typer.echo(error_line(exc), err=True)
    raise typer.Exit(2)


@protocols_app.command("list")
def list_command() -> None:
    """Names, gadget targets and one-line descriptions of the packaged protocols, and where they are."""
    protocols = packaged_protocols()
    typer.echo(f"{len(protocols)} protocols in {PROTOCOLS_DIR}:")
    width = max((len(p.name) for p in protocols), default=0)
    targets = max((len(", ".join(p.targets)) for p in protocols), default=0)
    for p in protocols:
        typer.echo(f"  {p.name:<{width}}  {', '.join(p.targets):<{targets}}  {p.description}")
    by_bundle: dict[str, list[str]] = {}
    for device_class, bundle in DEFAULT_BUNDLES.items():
        by_bundle.setdefault(bundle.name, []).append(DEVICE_CLASSES[device_class])
    defaults = ", ".join(f"{name} on {' or '.join(classes)}" for name, classes in by_bundle.items())
    typer.echo(f"model bundles in {WEIGHTS_DIR} (multi-coil default: {defaults}: the rgancs property model)")


@protocols_app.command("path")
def path_command(name: Annotated[str, typer.Argument(help="protocol name, e.g. side_by_side")]) -> None:
    """Print a packaged protocol's path (for ``recon-plugin replay --protocol``, ``gadgetron_ismrmrd_client -C``)."""
    from .errors import ReconError
    from .mrd_server import resolve_configuration

    try:
        typer.echo(str(resolve_configuration(name, PROTOCOLS_DIR)))
    except ReconError as exc:
        _fail(exc)


@protocols_app.command("install")
def install_command(
    dest: Annotated[
        Path, typer.Argument(help="Gadgetron's configuration folder: $GADGETRON_HOME/share/gadgetron/config")
    ],
    force: Annotated[bool, typer.Option(help="overwrite files that differ from the packaged protocols")] = False,
) -> None:
    """Copy the packaged protocol XMLs into DEST; a file there that differs is kept unless --force."""
    try:
        done = install_protocols(dest, force=force)
    except OSError as exc:
        _fail(exc)
    for action, target in done:
        typer.echo(f"{action:<9}  {target}")
    copied = sum(action != "unchanged" for action, _ in done)
    typer.echo(f"{copied} of {len(done)} protocols copied into {dest}")
