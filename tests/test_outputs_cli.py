"""The command line on a first run: --help without torch, warnings as lines, the namespace-package trap."""
import pathlib
import subprocess
import sys
import types
import warnings

import pytest

from ecgkt import cli

HELPS = [["--help"], ["predict", "--help"], ["export", "--help"], ["pipeline", "--help"], ["evaluate", "--help"],
         ["prepare", "--help"], ["preprocess", "--help"]]


@pytest.mark.parametrize("args", HELPS, ids=lambda a: " ".join(a))
def test_help_does_not_import_torch(args):
    code = ("import sys\n"
            "from ecgkt import cli\n"
            f"try:\n    cli.main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'LIGHT')\n")
    # as the console script does: the process is the `ecgkt` command
    r = subprocess.run([sys.executable, "-c", code.replace("import sys\n", "import sys\nsys.argv[0] = 'ecgkt'\n", 1)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "LIGHT" and "usage: ecgkt" in r.stdout


def test_import_ecgkt_still_registers_the_ops():
    r = subprocess.run([sys.executable, "-c", "import ecgkt, torch; print(hasattr(torch.ops.ecgkt, 'preprocess'), "
                                              "callable(ecgkt.preprocess))"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["True", "True"], r.stderr


def test_warnings_of_a_command_are_one_line(capsys):
    with warnings.catch_warnings():
        warnings.showwarning = cli._show_warning
        warnings.warn("ecgkt: lab tests with fewer than 30 paired values dropped: ck", UserWarning)
    err = capsys.readouterr().err
    assert err == "ecgkt: warning: lab tests with fewer than 30 paired values dropped: ck\n"


def test_the_checkout_folder_imported_as_a_namespace_package_is_named(monkeypatch, tmp_path):
    fake = types.ModuleType("ecgkt")
    fake.__path__ = [str(tmp_path / "ecgkt")]  # what `import ecgkt` gives next to a checkout named ecgkt
    monkeypatch.setitem(sys.modules, "ecgkt", fake)
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert "ecgkt: error:" in str(e.value) and str(tmp_path / "ecgkt") in str(e.value)


def test_python_started_beside_a_checkout_named_ecgkt_imports_the_package(tmp_path):
    """The editable install puts the checkout on sys.path (setup.py's package_dir), so a folder named ecgkt
    in the working directory is only a namespace portion and the real package still wins."""
    root = pathlib.Path(__file__).resolve().parents[1]
    (tmp_path / "ecgkt").symlink_to(root)
    r = subprocess.run([sys.executable, "-c", "import ecgkt, ecgkt.kernels.preprocess; print(ecgkt.__file__); "
                        "print(callable(ecgkt.preprocess))"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    path, ok = r.stdout.split()
    assert path.endswith("__init__.py") and ok == "True"
