"""Which ``<execute>`` targets a protocol may name, checked before any gadget process or thread starts.

A protocol's ``<external><execute name=MODULE target=NAME type="python"/>`` makes the runtime call
``MODULE.NAME``. Replay (a file the user chose) may run any gadget module that exists; ``serve`` (texts
from the network) runs only this project's gadgets (:data:`PROJECT_MODULE`) and the modules its operator
allows (``serve --allow-module NAME``). Every target must exist: a module is found without importing it and
its source is read (:mod:`ast`) for a top-level function or class of that name. The project's targets'
properties are parsed too (:class:`~recon_plugin.gadget_settings.GadgetSettings`), so a property typo fails
in well under a second instead of after every gadget has loaded its model.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from .errors import ProtocolError
from .gadget_settings import METHODS, GadgetSettings
from .replay.protocol import ExternalStep, ParallelStep, Protocol, Step

#: The project's gadget module; its targets are the methods.
PROJECT_MODULE = "recon_plugin.gadgets"
PROJECT_TARGETS = frozenset(METHODS)


def external_steps(steps: list[Step]) -> Iterator[tuple[str, ExternalStep]]:
    """Every ``<external>`` step with where it is (``stream`` or ``branch KEY``), parallel branches included."""
    for step in steps:
        if isinstance(step, ParallelStep):
            for key, branch in step.streams.items():
                for _, inner in external_steps(branch):
                    yield f"branch {key!r}", inner
        else:
            yield "stream", step


def check_protocol(
    protocol: Protocol, *, allowed_modules: Collection[str] | None = None, search_path: Sequence[str | Path] = ()
) -> None:
    """Check every ``<execute>`` of ``protocol`` before anything runs.

    ``allowed_modules`` None (replay): any module that exists. A collection (serve): the project's module and
    those named. The project's targets must be methods and their properties must parse. ``search_path``:
    folders searched first for gadget modules (replay's ``extra_pythonpath``).

    Raises:
        ProtocolError: a module not allowed or not found, a target the module does not define (with a
            did-you-mean), or a bad property of a project target.
    """
    for where, step in external_steps(protocol.steps):
        check_target(step, where, allowed_modules=allowed_modules, search_path=search_path)
        if step.module == PROJECT_MODULE:
            try:
                GadgetSettings.from_properties(step.target, step.properties)
            except ProtocolError as exc:
                raise ProtocolError(f"{where} gadget {step.name}: {exc}") from None


def check_target(
    step: ExternalStep,
    where: str = "stream",
    *,
    allowed_modules: Collection[str] | None = None,
    search_path: Sequence[str | Path] = (),
) -> None:
    """One ``<execute>``: the module allowed and found, the target defined in it (see :func:`check_protocol`)."""
    if step.module == PROJECT_MODULE:
        if step.target not in PROJECT_TARGETS:
            raise ProtocolError(f"{where}: {_unknown_target(step, PROJECT_TARGETS)}")
        return
    if allowed_modules is not None and step.module not in allowed_modules:
        extra = f" and {', '.join(sorted(allowed_modules))}" if allowed_modules else ""
        close = difflib.get_close_matches(step.module, [PROJECT_MODULE, *allowed_modules], n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ProtocolError(
            f"{where}: gadget module {step.module!r}{hint} is not allowed on this server: it runs the targets of "
            f"{PROJECT_MODULE}{extra} only; its operator may allow more with `recon-plugin serve --allow-module "
            f"{step.module}`"
        )
    names = module_targets(step.module, where, search_path)
    if step.target not in names:
        raise ProtocolError(f"{where}: {_unknown_target(step, names)}")


def module_targets(module: str, where: str = "stream", search_path: Sequence[str | Path] = ()) -> frozenset[str]:
    """Top-level functions and classes (and names bound by assignment or ``from ... import``) of ``module``'s
    source, found without importing the module or running any of its code.

    Raises:
        ProtocolError: no such module, or one without Python source (built-in or compiled only).
    """
    origin = _module_source(module, search_path)
    if origin is None:
        close = difflib.get_close_matches(module, [PROJECT_MODULE], n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ProtocolError(f"{where}: unknown gadget module {module!r}{hint}: no such Python module is installed")
    if origin.suffix != ".py":
        raise ProtocolError(
            f"{where}: gadget module {module!r} has no Python source ({origin.name}): gadget modules are .py files"
        )
    try:
        tree = ast.parse(origin.read_bytes(), filename=str(origin))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ProtocolError(f"{where}: gadget module {module!r} ({origin}) cannot be read: {exc}") from None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names if alias.name != "*")
    return frozenset(names)


def _module_source(module: str, search_path: Sequence[str | Path]) -> Path | None:
    """The file a dotted module name resolves to (``search_path`` first), searched package by package without
    importing any."""
    parts = module.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    try:
        extra = [str(p) for p in search_path]
        spec = importlib.machinery.PathFinder.find_spec(parts[0], extra) if extra else None
        spec = spec or importlib.util.find_spec(parts[0])  # a top-level name: found, not imported
        for part in parts[1:]:
            if spec is None or not spec.submodule_search_locations:
                return None
            spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return Path(spec.origin if spec.origin and spec.origin not in ("built-in", "frozen") else "<built-in or frozen>")


def _unknown_target(step: ExternalStep, names: Collection[str]) -> str:
    candidates = sorted(n for n in names if not n.startswith("_"))
    close = difflib.get_close_matches(step.target, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    listed = f"; {step.module} defines: {', '.join(candidates)}" if step.module == PROJECT_MODULE else ""
    return f"unknown target {step.target!r} in gadget module {step.module!r}{hint}{listed}"
