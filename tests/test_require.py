"""No silent skips: a missing optional test dependency fails under CI (or --require-all) and skips otherwise."""

import pytest

from . import conftest
from .conftest import require, require_executable


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_missing_dependency_fails_under_ci_naming_it(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="missing test dependency 'no_such_module_h21'"):
        require("no_such_module_h21")
    with pytest.raises(pytest.fail.Exception, match="missing test dependency 'no-such-tool-h21'"):
        require_executable("no-such-tool-h21")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_missing_dependency_skips_locally_with_a_reason(monkeypatch, ci):
    monkeypatch.setitem(conftest._CONFIG, "config", None)  # as if run without --require-all
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="missing test dependency 'no_such_module_h21'"):
        require("no_such_module_h21")


def test_present_dependency_is_returned(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require("json").dumps([1]) == "[1]"


def test_require_all_option_fails_without_ci(monkeypatch):
    class Config:
        @staticmethod
        def getoption(name):
            return name == "--require-all"

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setitem(conftest._CONFIG, "config", Config())
    with pytest.raises(pytest.fail.Exception, match="no_such_module_h21"):
        require("no_such_module_h21")
