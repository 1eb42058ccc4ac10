"""The simulation bank: seeded, resumable, no example duplicated across a resume, exact augmentations, producer
processes giving the same batches as the training process, and a Trainer on the bank resuming exactly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ellipse_slices

from training.bank import SimulationBank
from training.config import config_from_dict
from training.loop import Trainer
from training.sources import image_train_source

N_SLICES, SIZE = 12, 32


@pytest.fixture(scope="module")
def slices_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bank") / "slices.npy"
    rng = np.random.default_rng(5)
    mag = ellipse_slices(N_SLICES, SIZE)
    np.save(path, (mag * np.exp(1j * rng.uniform(0, 0.5, mag.shape))).astype(np.complex64))
    return path


def raw_config(slices: Path, out: Path, **data: Any) -> dict[str, Any]:
    return {
        "model": {
            "copies": 2,
            "features": 8,
            "data_consistency": "cg",
            "cg_iterations": 1,
            "init": "cg_sense",
            "init_iterations": 2,
            "global_skip": True,
            "norm": "none",
        },
        "data": {
            "path": str(slices),
            "train_range": [0, 10],
            "val_range": [10, 12],
            "simulation": "scanner",
            "coil_range": [2, 4],
            "estimate_maps": False,
            "mask_mixture": ["radial:3-5", "uniform:2-3"],
            "uniform_calib": [8, 8],
            "single_coil_fraction": 0.3,
            "sizes": [16, 24, 32],
            "crop": 32,
            "random_crop": True,
            "bank_batches": 3,
            "bank_reuse": 2,
            "bank_workers": 0,
            "seed": 4,
            **data,
        },
        "loss": {"fidelity_weight": 0.0},
        "optim": {"lr": 1e-3, "batch_size": 2, "steps": 8},
        "run": {"out": str(out), "checkpoint_every": 0, "validate_every": 0, "progress": False, "device": "cpu"},
    }


def make_bank(slices: Path, tmp: Path, workers: int = 0, **kw: Any) -> SimulationBank:
    config = config_from_dict(raw_config(slices, tmp))
    return SimulationBank(
        config=config.to_dict(),
        source=image_train_source(config),
        batch_size=2,
        seed=config.data.seed,
        batches=kw.pop("batches", 3),
        reuse=kw.pop("reuse", 2),
        workers=workers,
        init_iterations=2,
        **kw,
    )


def same_batch(a: Any, b: Any) -> bool:
    tensors = [(a.y, b.y), (a.x, b.x), (a.x0, b.x0), (a.op.mask, b.op.mask)]
    if (a.op.maps is None) != (b.op.maps is None):
        return False
    if a.op.maps is not None:
        tensors.append((a.op.maps, b.op.maps))
    return all(u.shape == v.shape and torch.equal(u, v) for u, v in tensors)


def test_bank_is_seeded_and_varies_sizes_and_coils(slices_path: Path, tmp_path: Path) -> None:
    one, two = make_bank(slices_path, tmp_path), make_bank(slices_path, tmp_path)
    shapes, coils = set(), set()
    for step in range(12):
        a, b = one.batch(step), two.batch(step)
        assert one.last_id == two.last_id and same_batch(a, b)
        shapes.add(tuple(a.y.shape[-2:]))
        coils.add(a.y.shape[1])
    assert len(shapes) > 1 and len(coils) > 1  # matrix sizes and coil counts drawn per batch
    other = make_bank(slices_path, tmp_path)
    other.seed = 99
    assert not same_batch(other.batch(0), one.batch(0))


def test_resumed_bank_continues_exactly_without_duplicates(slices_path: Path, tmp_path: Path) -> None:
    straight = make_bank(slices_path, tmp_path)
    ids, batches = [], []
    for step in range(16):
        batches.append(straight.batch(step))
        ids.append(straight.last_id)
    resume_at = 9
    resumed = make_bank(slices_path, tmp_path)  # a new process: only the step is known
    for step in range(resume_at, 16):
        batch = resumed.batch(step)
        assert resumed.last_id == ids[step] and same_batch(batch, batches[step])
    # the resumed bank simulated nothing that had left the bank before the resume step
    first_window = resumed.window(resume_at).start
    assert min(resumed._held) >= first_window or not resumed._held
    assert all(i >= first_window for i in ids[resume_at:])
    # every id is used in one stretch of steps: once it leaves the bank it never comes back
    for batch_id in set(ids):
        steps = [s for s, i in enumerate(ids) if i == batch_id]
        assert all(straight.window(s).start <= batch_id for s in steps)
        assert max(straight.window(s).start for s in steps) <= batch_id < straight.window(steps[-1]).stop
    # each batch is used about `reuse` times on average
    assert len(set(ids)) >= 16 // (2 * 2)


def test_augmentation_commutes_with_the_sense_model(slices_path: Path, tmp_path: Path) -> None:
    plain, augmented = make_bank(slices_path, tmp_path, augment=False), make_bank(slices_path, tmp_path)
    for step in range(8):
        p, a = plain.batch(step), augmented.batch(step)
        assert plain.last_id == augmented.last_id
        back_p, back_a = p.op.adjoint(p.y), a.op.adjoint(a.y)
        # |A^H y| and |x| are the same images, transposed or not; the phase is one global factor
        transposed = not torch.allclose(a.x.abs(), p.x.abs())
        if transposed:
            assert torch.allclose(a.x.abs(), p.x.abs().transpose(-2, -1))
            back_p, ref_p, x0_p = back_p.transpose(-2, -1), p.x.transpose(-2, -1), p.x0.transpose(-2, -1)
        else:
            ref_p, x0_p = p.x, p.x0
        phase = (a.x * ref_p.conj()).sum() / (ref_p.abs() ** 2).sum()
        assert abs(abs(complex(phase)) - 1) < 1e-4
        assert torch.allclose(back_a, back_p * phase, atol=1e-5)
        assert torch.allclose(a.x0, x0_p * phase, atol=1e-4)


def test_producer_process_gives_the_same_batches(slices_path: Path, tmp_path: Path) -> None:
    local = make_bank(slices_path, tmp_path)
    remote = make_bank(slices_path, tmp_path, workers=1, nice=3)
    try:
        for step in range(4):
            assert same_batch(remote.batch(step), local.batch(step))
        assert remote._pool is not None  # the producer runs niced, this process does not
        assert remote._pool.submit(os.nice, 0).result() == min(19, os.nice(0) + 3)
    finally:
        remote.close()


def test_trainer_on_the_bank_resumes_exactly(slices_path: Path, tmp_path: Path) -> None:
    straight = Trainer(config_from_dict(raw_config(slices_path, tmp_path / "a")))
    straight.fit()
    chunked = Trainer(config_from_dict(raw_config(slices_path, tmp_path / "b")))

    def interrupt(trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.step == 3:
            raise KeyboardInterrupt

    chunked.callbacks.append(interrupt)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: a checkpoint of step 3
        chunked.fit()
    bundled = Trainer(config_from_dict(raw_config(slices_path, tmp_path / "b")))
    bundled.fit(resume=tmp_path / "b", max_seconds=0.0)  # a chunk of no step: validation, checkpoint, bundle
    assert bundled.step == 3 and (tmp_path / "b" / "bundle").is_dir()
    resumed = Trainer(config_from_dict(raw_config(slices_path, tmp_path / "b")))
    resumed.fit(resume=tmp_path / "b")
    assert resumed.step == 8
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
