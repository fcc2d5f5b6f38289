"""How ``strata workflow status`` writes what a task asked for, was given and used. Pure."""

from __future__ import annotations

import pytest

from strata.api.common.v1.resources_pb2 import Resources, ResourceUsage
from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.sdk.workflows.usage import cores, cpu_use, memory, memory_use, usage_table

GIB = 2**30


@pytest.mark.parametrize(
    ("amount", "written"),
    [(4 * GIB, "4 GiB"), (3 * GIB // 2, "1.5 GiB"), (512 * 2**20, "512 MiB"), (100, "100 bytes")],
)
def test_memory_reads_in_binary_units(amount: int, written: str) -> None:
    assert memory(amount) == written


@pytest.mark.parametrize(("millis", "written"), [(2000, "2"), (500, "0.5"), (1250, "1.25")])
def test_cpu_reads_in_cores(millis: int, written: str) -> None:
    assert cores(millis) == written


def test_a_task_shows_asked_reserved_and_used_side_by_side() -> None:
    task = pb.TaskInstance(
        task_id="train",
        requested=Resources(cpu_millis=2000, memory_bytes=4 * GIB),
        limits=Resources(cpu_millis=2000, memory_bytes=4 * GIB),
        reserved=Resources(cpu_millis=500, memory_bytes=3 * GIB // 2),
        peak_usage=ResourceUsage(cpu_millis=800, memory_bytes=int(1.2 * GIB)),
    )

    assert memory_use(task) == "4 GiB asked · 1.5 GiB reserved · 1.2 GiB used"
    assert cpu_use(task) == "2 CPU asked · 0.5 CPU reserved · 0.8 CPU used"


def test_a_limit_raised_after_running_out_of_memory_shows_and_unknown_figures_do_not() -> None:
    task = pb.TaskInstance(
        task_id="train",
        requested=Resources(memory_bytes=4 * GIB),
        limits=Resources(memory_bytes=8 * GIB),
        reserved=Resources(memory_bytes=8 * GIB),
    )

    assert memory_use(task) == "4 GiB asked · limit 8 GiB · 8 GiB reserved"
    assert cpu_use(task) == "no cpu asked · 0 CPU reserved"


def test_a_run_recorded_before_usage_was_kept_has_no_usage_table() -> None:
    assert usage_table([pb.TaskInstance(task_id="train")]) is None
    assert usage_table([pb.TaskInstance(task_id="train", requested=Resources())]) is not None
