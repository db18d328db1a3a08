"""Shared by the fault-injection suites (tests/test_faults*.py): run many `ecgkt` command lines in ONE
subprocess (a torch import per case would cost seconds each) and judge what a user would see."""
import json
import os
import subprocess
import sys

# Runs ecgkt.cli.main once per case; an exception escaping main is printed as the user would see it.
_DRIVER = r'''
import contextlib, io, json, sys, traceback, warnings
warnings.simplefilter("ignore")
from ecgkt.cli import main
results = []
for case in json.loads(sys.stdin.read()):
    ns = {}
    if case.get("setup"):
        exec(case["setup"], ns)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(case["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        except BaseException:
            traceback.print_exc()
            rc = "exception"
    if "teardown" in ns:
        ns["teardown"]()
    results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
sys.stdout.write("\n" + json.dumps(results) + "\n")
'''


def run_cases(cases, timeout=600):
    """cases: [{"argv": [...], "setup": optional code run first (may define teardown())}] ->
    [{"rc", "out", "err"}] in the same order."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    payload = json.dumps([{"argv": [str(a) for a in c["argv"]], "setup": c.get("setup")} for c in cases])
    r = subprocess.run([sys.executable, "-c", _DRIVER], input=payload, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def error_lines(err: str) -> list:
    return [ln for ln in err.splitlines() if ln.strip()]


def assert_one_line(result, *words, rc=2):
    """Exit status ``rc``, no traceback, and exactly one stderr line `ecgkt: error: ...` holding ``words``."""
    err = result["err"]
    assert "Traceback" not in err, err
    assert result["rc"] == rc, (result["rc"], err)
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("ecgkt: error: "), err
    for w in words:
        assert str(w).lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def strict_json(text: str):
    """Parse JSON refusing NaN/Infinity tokens (what strict readers do)."""
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def kill_group_after(cmd, lines: int, delay: float, counts=lambda line: True) -> int:
    """Start cmd in its own process group; kill -9 the whole group `delay` s after the `lines`-th stdout line
    for which `counts(line)` holds (or at its end). Returns how many such lines were seen."""
    import signal
    import time

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    seen = 0
    for line in p.stdout:
        seen += bool(counts(line))
        if seen >= lines:
            break
    time.sleep(delay)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=120)
    p.stdout.close()
    return seen
