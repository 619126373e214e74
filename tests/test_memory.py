"""The peak-memory figure is true: a known allocation is seen within 10%."""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import pytest
import torch

import techniques
from bench.measure.memory import PeakRSS

ALLOC_MIB = 256


def test_peak_rss_sees_a_known_allocation():
    with PeakRSS() as mem:
        block = torch.ones(ALLOC_MIB * 2**20 // 4)  # float32: ALLOC_MIB MiB, every page touched
        del block
    assert mem.exact, "this Linux should allow resetting the high-water mark"
    assert abs(mem.delta_mb - ALLOC_MIB) / ALLOC_MIB < 0.10, mem.delta_mb


def test_window_excludes_what_was_allocated_before_it():
    before = torch.ones(ALLOC_MIB * 2**20 // 4)
    del before  # the old peak is high; a fresh window must not report it
    with PeakRSS() as mem:
        small = torch.ones(16 * 2**20 // 4)
        del small
    assert mem.delta_mb < 40, mem.delta_mb


@dataclass(frozen=True)
class _Allocating(techniques.Runtime):
    """Runs the model after mapping (and touching) a scratch buffer of known size each call."""

    name = "t_allocating"
    mib: int = 128

    def prepare(self, model, ctx):
        def run(x):
            # Mapped directly rather than through the C heap: each call first-touches fresh pages
            # whatever heap policy the process runs under.
            scratch = mmap.mmap(-1, self.mib * 2**20)
            view = torch.frombuffer(scratch, dtype=torch.uint8)
            view.fill_(1)
            out = model(x)
            del view
            scratch.close()
            return out
        return techniques.Predictor(run=run)


def test_cell_memory_column_is_true(digits):
    from bench.running.cell import CellSpec
    from tests.cellrow import cell_row
    from bench.env import detect
    from bench.measure.timing import TimingConfig

    techniques.register(_Allocating)
    try:
        row = cell_row(CellSpec.of("lenet", "t_allocating:mib=128", 1,
                                     timing=TimingConfig(warmup=1, min_rounds=3, min_time_s=0.0)), detect())
    finally:
        techniques.unregister("t_allocating")
    assert row["status"] == "ok"
    assert row["infer_mem_mb"] == pytest.approx(128, rel=0.10)
    assert row["peak_mem_mb"] >= row["infer_mem_mb"]
    # The scratch is mapped and unmapped every call, so each call first-touches all its 4 KiB pages
    # again; eager lenet at batch 1 reuses its heap.
    pages = 128 * 2**20 / 4096
    assert row["page_faults_per_call"] >= 0.9 * pages, row["page_faults_per_call"]
    assert row["baseline_page_faults_per_call"] < 0.1 * pages, row["baseline_page_faults_per_call"]
