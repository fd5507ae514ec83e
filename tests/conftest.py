"""Shared test fixtures: paths to the team's real data beside the repo."""
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"tests need the team data at {SHARED_DATA} (clone the repo beside shared/)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads():
    if torch.get_num_threads() != 2:  # resetting the pool needlessly after a thread used it aborts at exit
        torch.set_num_threads(2)
    yield


_exit_status = {}


def pytest_sessionfinish(session, exitstatus):
    _exit_status["code"] = int(exitstatus)


def pytest_unconfigure(config):
    """Leave without the interpreter's teardown: after the server tests ran torch in their engine thread and a
    later test ran it in the main thread, torch's thread pools abort in their C++ destructors at exit
    ("terminate called without an active exception"), turning a passing run into status 134. Everything
    is printed and flushed by now; the status is pytest's own."""
    if "code" in _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status["code"])
