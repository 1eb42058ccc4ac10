"""``recon-train fit --config run.toml [--resume RUN_OR_CHECKPOINT]``, for the owner to register.

Register with ``app.command("fit")(fit)`` in ``training/cli.py``. Data-parallel on N processes::

    torchrun --nproc_per_node N -m training.fit_cli --config run.toml

(see :mod:`training.distributed`; only rank 0 logs and writes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from recon_plugin.console import LOG_FORMAT, configure_logging, error_line
from recon_plugin.errors import ReconError

log = logging.getLogger(__name__)


def fit(
    config: Annotated[Path, typer.Option("--config", help="training configuration (TOML)")],
    resume: Annotated[
        Path | None, typer.Option(help="checkpoint file or run folder to continue from (newest checkpoint)")
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="start no step after MINUTES; validation, checkpoint and bundle written (0: only those, e.g. of "
            "a resumed checkpoint)",
        ),
    ] = None,
) -> None:
    """Train an RGANCS bundle from a TOML configuration (GAN optional); Ctrl-C saves a checkpoint."""
    from . import distributed
    from .config import load_config
    from .loop import Trainer

    out: str | None = None
    info = None
    try:
        cfg = load_config(config)
        out = cfg.run.out
        info = distributed.init_from_env(cfg.run.device)
        distributed.quiet_other_ranks(info)
        trainer = Trainer(cfg)
        metrics = trainer.fit(resume=resume, max_seconds=None if minutes is None else minutes * 60)
        distributed.shutdown()
    except ReconError as exc:
        typer.echo(error_line(exc), err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt as exc:
        log.warning("stopped; resume with --resume %s", out or "<run folder>")
        raise typer.Exit(130) from exc
    if info is None or info.is_main:
        typer.echo(f"validation: { ({k: round(v, 4) for k, v in metrics.items()}) }")
        typer.echo(f"wrote {Path(cfg.run.out) / 'bundle'}")


def _standalone(
    config: Annotated[Path, typer.Option("--config", help="training configuration (TOML)")],
    resume: Annotated[
        Path | None, typer.Option(help="checkpoint file or run folder to continue from (newest checkpoint)")
    ] = None,
    minutes: Annotated[float | None, typer.Option(min=0.0, help="start no step after MINUTES")] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="log progress (INFO); -vv: DEBUG too")
    ] = 0,
) -> None:
    """Train an RGANCS bundle from a TOML configuration (GAN optional); Ctrl-C saves a checkpoint."""
    configure_logging(verbose, fmt=f"%(asctime)s {LOG_FORMAT}")
    fit(config, resume, minutes)


def main() -> None:
    """``python -m training.fit_cli`` (what torchrun starts): :func:`fit`, warnings logged (``-v``: INFO); glibc
    keeps freed memory for the next step (:mod:`recon_plugin.allocator`)."""
    from recon_plugin.allocator import keep_freed_memory

    keep_freed_memory()
    typer.run(_standalone)


if __name__ == "__main__":
    main()
