"""The command-line error helpers every drs-* command shares (generator/dataset_format.py, bottom):
one line on stderr and exit 2 for the user's mistakes, 130 and what was kept for Ctrl-C, tracebacks
only on request, and the Hydra command-line peeks that run before Hydra does.

Written from the survivors of mutation testing (tests/mutation.py): the commands' own tests reach
these helpers, but only through a few messages each.
"""

from __future__ import annotations

import errno
import os

import pytest

from generator.dataset_format import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    DatasetFormatError,
    UserError,
    command_line_value,
    debug_requested,
    describe_error,
    out_dir_problem,
    report_error,
    report_interrupt,
    run_command,
)


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DRS_DEBUG", raising=False)


def raising(exc: BaseException):
    def body():
        raise exc

    return body


# ----------------------------------------------------------------------------------------------
# run_command / report_error / report_interrupt


def test_exit_codes_are_the_documented_ones():
    assert (EXIT_ERROR, EXIT_INTERRUPTED) == (2, 130)


def test_a_body_that_returns_is_exit_0(capsys):
    ran = []
    assert run_command("drs-x", lambda: ran.append(1)) == 0
    assert ran == [1] and capsys.readouterr() == ("", "")


@pytest.mark.parametrize("exc, line", [
    (UserError("bad key foo"), "drs-x: error: bad key foo"),
    (DatasetFormatError("/d/manifest.json: not valid JSON"), "drs-x: error: /d/manifest.json: not valid JSON"),
    (OSError(errno.ENOSPC, "No space left on device", "/d/x.h5"), "drs-x: error: /d/x.h5: No space left on device"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, exc, line):
    assert run_command("drs-x", raising(exc)) == 2
    assert capsys.readouterr() == ("", line + "\n")


def test_extra_user_errors_count_and_other_errors_propagate(capsys):
    class Refused(Exception):
        pass

    assert run_command("drs-x", raising(Refused("no")), user_errors=(Refused,)) == 2
    assert capsys.readouterr().err == "drs-x: error: no\n"
    with pytest.raises(Refused):
        run_command("drs-x", raising(Refused("no")))
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_command("drs-x", lambda: 1 / 0)


def test_debug_shows_the_traceback_of_a_user_error(capsys):
    with pytest.raises(UserError):
        run_command("drs-x", raising(UserError("bad")), debug=True)
    with pytest.raises(KeyboardInterrupt):
        run_command("drs-x", raising(KeyboardInterrupt()), debug=True)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("var", ["HYDRA_FULL_ERROR", "DRS_DEBUG"])
def test_either_debug_variable_shows_tracebacks(monkeypatch, capsys, var):
    monkeypatch.setenv(var, "1")
    assert debug_requested() is True
    with pytest.raises(KeyboardInterrupt):
        run_command("drs-x", raising(KeyboardInterrupt()))
    with pytest.raises(UserError):
        report_error("drs-x", UserError("bad"))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(var, "0")
    assert debug_requested() is False


def test_no_debug_variable_no_traceback(monkeypatch):
    assert debug_requested() is False
    monkeypatch.setenv("hydra_full_error", "1")  # the names are case-sensitive
    monkeypatch.setenv("drs_debug", "1")
    assert debug_requested() is False


def test_ctrl_c_says_what_was_kept_and_exits_130(capsys):
    assert run_command("drs-x", raising(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "drs-x: interrupted; nothing was kept\n"
    assert run_command("drs-x", raising(KeyboardInterrupt()), on_interrupt="3 shards kept") == 130
    assert capsys.readouterr().err == "drs-x: interrupted; 3 shards kept\n"


def test_ctrl_c_message_may_be_computed_only_when_interrupted(capsys):
    asked = []

    def kept() -> str:
        asked.append(1)
        return f"{len(asked)} file(s) kept"

    assert run_command("drs-x", lambda: None, on_interrupt=kept) == 0 and asked == []
    assert run_command("drs-x", raising(KeyboardInterrupt()), on_interrupt=kept) == 130
    assert capsys.readouterr().err == "drs-x: interrupted; 1 file(s) kept\n"


def test_report_helpers_print_to_stderr_only(capsys):
    assert report_interrupt("drs-y", "all kept") == 130
    assert report_error("drs-y", UserError("oops")) == 2
    assert capsys.readouterr() == ("", "drs-y: interrupted; all kept\ndrs-y: error: oops\n")


# ----------------------------------------------------------------------------------------------
# describe_error


def test_os_errors_name_their_files_first():
    assert describe_error(OSError(errno.ENOSPC, "No space left on device", "/d/a.h5")) == (
        "/d/a.h5: No space left on device")
    assert describe_error(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == (
        "/a -> /b: Invalid cross-device link")
    assert describe_error(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"


def test_long_messages_keep_two_lines_and_empty_ones_name_the_type():
    assert describe_error(ValueError("\n first\n\n second \nthird\n")) == "first\n   second "
    assert describe_error(ValueError("one line")) == "one line"
    assert describe_error(KeyError()) == "KeyError"
    assert describe_error(OSError("no errno")) == "no errno"  # strerror None: the plain message


# ----------------------------------------------------------------------------------------------
# command_line_value: a Hydra command line read before Hydra runs


def test_the_last_value_of_a_key_wins_with_or_without_plus():
    argv = ["out_dir=/a", "seed=3", "+out_dir=/b", "render.out_dir=/c"]
    assert command_line_value(argv, "out_dir") == "/b"
    assert command_line_value(["seed=3"], "out_dir") is None
    assert command_line_value(["seed=3"], "out_dir", "/default") == "/default"
    assert command_line_value(["out_dir=/a", "out_dir=/b", "out_dir=/c"], "out_dir") == "/c"
    assert command_line_value(["Xout_dir=/a", "out_dirX=/b", "out_dir2=/c"], "out_dir") is None  # other keys


def test_values_keep_their_equals_signs_and_lose_their_quotes():
    assert command_line_value(["covers.dir='/x=1/y'"], "covers.dir") == "/x=1/y"
    assert command_line_value(['name="a b"'], "name") == "a b"
    assert command_line_value(["name='a'+"], "name") == "a'+"  # only the quotes around it go
    assert command_line_value(["+name=+x+"], "name") == "+x+"


@pytest.mark.parametrize("value", ["a,b", "${oc.env:HOME}", "range(0,3)", "choice(a)", "glob(*)", "range(3)"])
def test_sweeps_and_interpolations_are_left_to_hydra(value):
    assert command_line_value([f"out_dir={value}"], "out_dir") is None
    assert command_line_value([], "out_dir", value) is None


def test_a_plain_value_that_only_looks_like_a_sweep_is_kept():
    assert command_line_value(["out_dir=/data/ranges(1)"], "out_dir") == "/data/ranges(1)"
    assert command_line_value(["out_dir=/data/glob"], "out_dir") == "/data/glob"
    assert command_line_value(["out_dir=X/runs/X"], "out_dir") == "X/runs/X"  # only quotes are stripped


# ----------------------------------------------------------------------------------------------
# out_dir_problem


def test_a_writable_or_creatable_out_dir_is_fine(tmp_path):
    assert out_dir_problem(None) is None
    assert out_dir_problem(tmp_path) is None
    assert out_dir_problem(tmp_path / "new" / "deeper") is None
    assert out_dir_problem(str(tmp_path / "new")) is None


def test_a_file_in_the_way_is_named(tmp_path):
    file = tmp_path / "f"
    file.write_text("")
    assert out_dir_problem(file) == f"out_dir={file}: exists and is not a directory"
    assert out_dir_problem(file / "sub") == (
        f"out_dir={file / 'sub'}: cannot write into {file} (permission denied, read-only or not a directory)")


@pytest.mark.parametrize("denied", [os.W_OK, os.X_OK])
def test_an_unwritable_parent_is_named(tmp_path, monkeypatch, denied):
    real = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    # As a user without that permission sees it (the tests may run as root, who may write anywhere).
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) and mode & denied
                        else real(p, mode, **kw))
    assert out_dir_problem(locked / "run") == (
        f"out_dir={locked / 'run'}: cannot write into {locked} (permission denied, read-only or not a directory)")
    assert out_dir_problem(tmp_path / "other") is None
