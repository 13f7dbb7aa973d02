"""Finding the job cgroups at server start: stale ones swept, a host without them said once."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from proctor.errors import InputError
from proctor.server import cgroups
from proctor.server.settings import ServerSettings


def test_without_a_memory_controller_auto_warns_once_and_required_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A host without cgroups cannot be made here: point the module at an empty directory instead.
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path)
    with caplog.at_level(logging.WARNING, logger="proctor.server"):
        assert cgroups.detect("auto") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no job cgroups" in warnings[0] and "RLIMIT_AS" in warnings[0], warnings
    with pytest.raises(InputError, match="sandbox.cgroups is required"):
        cgroups.detect("required")
    assert cgroups.detect("off") is None


def test_the_setting_takes_only_its_three_values() -> None:
    assert ServerSettings.model_validate({"sandbox": {"cgroups": "required"}}).sandbox.cgroups == "required"
    with pytest.raises(ValueError, match="cgroups"):
        ServerSettings.model_validate({"sandbox": {"cgroups": "sometimes"}})


def test_the_job_ceiling_defaults_to_memory_mb() -> None:
    box = ServerSettings.model_validate({"sandbox": {"memory_mb": 1000}}).sandbox
    assert box.ceiling("job_memory_mb") == 1000
    assert ServerSettings.model_validate({"sandbox": {"job_memory_mb": 300}}).sandbox.ceiling("job_memory_mb") == 300


@pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root")
def test_start_up_sweeps_the_job_cgroups_of_dead_servers() -> None:
    found = cgroups.detect("auto")
    if found is None:
        pytest.skip("no writable memory cgroup on this machine")
    ours = found.memory.base
    gone = subprocess.Popen(["true"])  # its pid is surely free once reaped
    gone.wait()
    stale = ours.parent / f"{cgroups.PREFIX}{gone.pid}" / "job-left-behind"
    try:
        stale.mkdir(parents=True)
        found.sweep()
        assert not stale.parent.exists()
        assert ours.exists()  # this live server's own parent stays
    finally:
        for path in (stale, stale.parent, ours):
            if path.exists():
                path.rmdir()
        if found.pids is not None and found.pids.base.exists():
            found.pids.base.rmdir()
