"""pytest plugin of ``make test``: say which simulators the run used and which it skipped.

Loaded with ``-p tests.simulators_report``.  It counts the tests that built or ran a
simulation (``sim.runner.build`` / ``sim.runner.run``, Verilator lint) per simulator, and
the tests skipped for want of one, and prints one line per simulator at the end, e.g.
``simulators: verilator ran in 61 tests; icarus skipped in 3 tests (iverilog is not on PATH)``.

Under pytest-xdist (``make test`` runs two workers) the tests run in worker processes: each
test's report carries the simulators it used (``user_properties``), and the counting is done
on the reports, which reach the controlling process too.
"""
from __future__ import annotations

import functools

import pytest

SIMULATORS = ("verilator", "icarus")
_used: dict[str, set[str]] = {}                 # this process: test -> simulators it used
_ran: dict[str, set[str]] = {s: set() for s in SIMULATORS}      # from the reports: simulator -> tests
_skipped: dict[str, list[str]] = {s: [] for s in SIMULATORS}
_current: list[str] = []


def _note(sim: str) -> None:
    if _current and sim in SIMULATORS:
        _used.setdefault(_current[-1], set()).add(sim)


def _wrap(module, name: str, simulator_of) -> None:
    orig = getattr(module, name, None)
    if orig is None or getattr(orig, "_simulators_report", False):
        return

    @functools.wraps(orig)
    def wrapper(*args, **kwargs):
        try:
            _note(simulator_of(args, kwargs))
        except Exception:  # never let the report change a test's outcome
            pass
        return orig(*args, **kwargs)

    wrapper._simulators_report = True
    setattr(module, name, wrapper)


def pytest_configure(config):
    try:
        from hwgen import verilog
        from sim import runner
    except Exception:  # the simulation stack is not importable: nothing to count
        return
    _wrap(runner, "build", lambda a, kw: kw.get("simulator", a[3] if len(a) > 3 else "verilator"))
    _wrap(runner, "run", lambda a, kw: getattr(a[0] if a else kw.get("b"), "simulator", "verilator"))
    _wrap(verilog, "lint", lambda a, kw: "verilator")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current.append(item.nodeid)
    try:
        yield
    finally:
        _current.pop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    sims = _used.get(item.nodeid)
    if sims:
        outcome.get_result().user_properties.append(("simulators", sorted(sims)))


def pytest_runtest_logreport(report):
    for key, value in getattr(report, "user_properties", ()):
        if key == "simulators":
            for sim in value:
                if sim in _ran:
                    _ran[sim].add(report.nodeid)
    if report.skipped:
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        reason = reason.removeprefix("Skipped: ").strip()
        for sim, words in (("icarus", ("icarus", "iverilog")), ("verilator", ("verilator",))):
            if any(w in reason.lower() for w in words):
                _skipped[sim].append(reason)
                break


def pytest_terminal_summary(terminalreporter):
    parts = []
    for sim in SIMULATORS:
        ran, skipped = len(_ran[sim]), len(_skipped[sim])
        text = f"{sim} ran in {ran} test{'s' if ran != 1 else ''}"
        if skipped:
            text += f", skipped in {skipped} ({_skipped[sim][0]})"
        parts.append(text)
    terminalreporter.write_line("simulators: " + "; ".join(parts))
