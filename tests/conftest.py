import os

# The Triton interpreter must be chosen before any @triton.jit module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
CINC_DIR = SHARED / "data" / "cinc2021"


@pytest.fixture(scope="session")
def cinc_dir():
    if not CINC_DIR.is_dir():
        pytest.skip(f"real CinC 2021 records not present at {CINC_DIR} (only in the development checkout)")
    return CINC_DIR


@pytest.fixture(scope="session")
def pydicom_ecg_path():
    pydicom = pytest.importorskip("pydicom", reason="pydicom (test extra) is needed for the bundled DICOM ECG")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("waveform_ecg.dcm")
    if path is None:
        pytest.skip("pydicom's bundled waveform_ecg.dcm is not available")
    return pathlib.Path(path)
