"""facesynth.background: a call in a forked child gives its value or raises its error in the parent; a child
that dies without an answer, or does not answer in time, is run again in the parent; a child of a failed parent
is ended. And the CLIs'
error types named "module:Class" (facesynth.cli_util.user_errors)."""
from __future__ import annotations

import os
import time

import click
import pytest
from click.testing import CliRunner

from facesynth.background import Background, fork_available
from facesynth.cli_util import user_errors

needs_fork = pytest.mark.skipif(not fork_available(), reason="no fork here")


def _pid_and(x):
    return os.getpid(), x * 2


def _fails(message):
    raise ValueError(message)


def _dies_in_child(parent_pid):
    if os.getpid() != parent_pid:
        os._exit(3)  # a crash without an answer
    return "here"


@needs_fork
def test_the_value_comes_from_a_child():
    with Background(_pid_and, 21) as job:
        assert job.forked
        pid, value = job.result()
    assert value == 42 and pid != os.getpid()


@needs_fork
def test_the_childs_error_is_raised_with_its_traceback():
    with Background(_fails, "no face") as job:
        with pytest.raises(ValueError, match="no face") as info:
            job.result()
    assert any("in the background process" in n and "_fails" in n for n in getattr(info.value, "__notes__", []))


@needs_fork
def test_a_child_that_dies_is_run_again_here():
    with Background(_dies_in_child, os.getpid()) as job:
        assert job.result() == "here"


def _hangs_in_child(parent_pid):
    if os.getpid() != parent_pid:
        time.sleep(60)  # a child stuck on a lock that did not survive the fork
        return "child"
    return "here"


@needs_fork
def test_a_child_that_does_not_answer_in_time_is_ended_and_the_call_runs_here():
    with Background(_hangs_in_child, os.getpid()) as job:
        pid = job._pid
        assert job.result(timeout=0.5) == "here"  # not the child's answer: the call ran here
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # ended and reaped


def test_without_fork_the_call_runs_at_result():
    job = Background(_pid_and, 1, fork=False)
    assert not job.forked and job.result() == (os.getpid(), 2)


@needs_fork
def test_a_running_child_is_ended_when_the_parent_fails():
    with pytest.raises(RuntimeError):
        with Background(time.sleep, 60) as job:
            pid = job._pid
            raise RuntimeError("loading failed")
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # ended and reaped


class PhotoProblem(ValueError):
    """A stage's user error, named to :func:`user_errors` by its module and name."""


def test_user_errors_by_name_of_loaded_modules():
    @click.command()
    @click.argument("kind")
    @user_errors(f"{__name__}:PhotoProblem", "not.imported.module:Error")
    def cmd(kind):
        raise PhotoProblem("no face\nmore") if kind == "photo" else KeyError("bug")

    r = CliRunner().invoke(cmd, ["photo"])
    assert r.exit_code == 1 and r.output.strip() == "Error: no face"
    r = CliRunner().invoke(cmd, ["other"])
    assert r.exit_code == 1 and isinstance(r.exception, KeyError)  # not a user error: the traceback stays
