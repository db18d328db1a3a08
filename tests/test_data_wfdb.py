"""The general WFDB reader and the DICOM reader: real records, other layouts, corrupt files."""
import shutil

import numpy as np
import pytest
import wfdb

from data_tiny import MIMIC_LEADS, random_frames, write_mimic_record
from ecgkt.data import INVALID, STANDARD_LEADS, iter_windows, read_header, read_record
from ecgkt.errors import RecordError


def test_cinc_matlab_records_match_wfdb(cinc_dir):
    records = sorted(p.with_suffix("") for p in cinc_dir.glob("*.hea"))
    assert records
    for base in records:
        rec = read_record(base)
        ref = wfdb.rdrecord(str(base))
        assert rec.signal.dtype == np.int16 and rec.signal.shape == (12, ref.sig_len)
        assert rec.fs == 500 and np.all(rec.gain == 1000)
        # CinC files are already in standard order: same samples, same mV
        assert [ref.sig_name[i] for i in range(12)] == list(STANDARD_LEADS)
        np.testing.assert_allclose(rec.physical(), ref.p_signal.T, atol=1e-6)


def test_mimic_layout_maps_avf_avl_by_name(tmp_path):
    frames = random_frames(3, n=701)
    base = write_mimic_record(tmp_path, 10000032, 40689238, frames)
    assert read_header(base).simple  # the numpy fast path
    rec = read_record(f"{base}.hea")
    for k, name in enumerate(STANDARD_LEADS):
        np.testing.assert_array_equal(rec.signal[k], frames[:, MIMIC_LEADS.index(name)])
    assert np.all(rec.gain == 200) and np.all(rec.baseline == 0) and rec.fs == 500
    # the fast path agrees with wfdb's own reader, physical units included
    ref = wfdb.rdrecord(str(base))
    order = [ref.sig_name.index(n) for n in STANDARD_LEADS]
    np.testing.assert_allclose(rec.physical(), ref.p_signal[:, order].T, atol=1e-6, equal_nan=True)


def test_invalid_samples_become_sentinel_and_nan(tmp_path):
    frames = random_frames(4, n=333)
    frames[10:20, MIMIC_LEADS.index("V3")] = -32768
    rec = read_record(write_mimic_record(tmp_path, 10000032, 40000000, frames))
    v3 = STANDARD_LEADS.index("V3")
    assert rec.invalid[v3, 10:20].all() and rec.invalid.sum() == 10
    assert np.isnan(rec.physical()[v3, 10:20]).all()


@pytest.mark.parametrize("fmt", ["16", "212", "24"])
def test_ptb_like_record_15_signals_lowercase_1000hz(tmp_path, fmt):
    rng = np.random.default_rng(7)
    names = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "vx", "vy", "vz"]
    n = 2345
    mv = np.cumsum(rng.normal(0, 0.02, size=(n, 15)), axis=0)
    gain = {"16": 2000.0, "212": 200.0, "24": 200000.0}[fmt]
    wfdb.wrsamp("s0010_re", fs=1000, units=["mV"] * 15, sig_name=names, p_signal=mv, fmt=[fmt] * 15,
                adc_gain=[gain] * 15, baseline=[3] * 15, write_dir=str(tmp_path))
    base = tmp_path / "s0010_re"
    rec = read_record(base)
    ref = wfdb.rdrecord(str(base))
    assert rec.fs == 1000 and rec.signal.shape == (12, n) and rec.signal.dtype == np.int16
    # 24-bit samples are rescaled into int16 with the gain scaled alike: mV values are kept
    tol = 1.01 / rec.gain.min()
    np.testing.assert_allclose(rec.physical(), ref.p_signal[:, :12].T, atol=tol)
    # partial reads and windows
    part = read_record(base, start=100, stop=600)
    np.testing.assert_allclose(part.physical(), rec.physical()[:, 100:600], atol=tol)
    wins = list(iter_windows(rec, 1000, 500))
    assert len(wins) == 3 and np.array_equal(wins[2].signal, rec.signal[:, 1000:2000])


def test_units_in_microvolts(tmp_path):
    frames = random_frames(5, n=50)
    base = write_mimic_record(tmp_path, 10000032, 40000001, frames)
    hea = base.with_suffix(".hea")
    hea.write_text(hea.read_text().replace("200.0(0)/mV", "0.2(5)/uV"))
    rec = read_record(base)
    assert np.all(rec.gain == 200) and np.all(rec.baseline == 5)


def test_truncated_dat_names_the_file(tmp_path):
    base = write_mimic_record(tmp_path, 10000032, 40000002, random_frames(6, n=500))
    with open(f"{base}.dat", "r+b") as f:
        f.truncate(11999)
    with pytest.raises(RecordError, match=r"40000002\.dat: truncated: 11999 bytes, the header needs 12000"):
        read_record(base)


def test_truncated_cinc_mat_file(tmp_path, cinc_dir):
    for ext in (".hea", ".mat"):
        shutil.copy(cinc_dir / f"E07500{ext}", tmp_path / f"E07500{ext}")
    with open(tmp_path / "E07500.mat", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(RecordError, match=r"E07500\.mat: truncated"):
        read_record(tmp_path / "E07500")


@pytest.mark.parametrize("text, problem", [
    ("rec 12 abc 5000\n", "malformed header"),
    ("rec 12 500 5000\nrec.dat 16 200/mV 16 0 0 0 0 I\n", "malformed header"),
    ("", "malformed header"),
])
def test_malformed_header_names_the_file(tmp_path, text, problem):
    (tmp_path / "rec.hea").write_text(text)
    (tmp_path / "rec.dat").write_bytes(b"\0" * 120000)
    with pytest.raises(RecordError, match=rf"rec\.hea: {problem}"):
        read_record(tmp_path / "rec")


def test_missing_leads_listed(tmp_path):
    names = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "MLII", "V6"]
    base = write_mimic_record(tmp_path, 10000032, 40000003, random_frames(8, n=100), lead_names=names)
    with pytest.raises(RecordError, match=r"40000003\.hea: missing standard lead\(s\) V5"):
        read_record(base)


def test_missing_files(tmp_path):
    with pytest.raises(RecordError, match=r"nothing\.hea: cannot read header"):
        read_record(tmp_path / "nothing")
    base = write_mimic_record(tmp_path, 10000032, 40000004, random_frames(9, n=100))
    base.with_suffix(".dat").unlink()
    with pytest.raises(RecordError, match=r"40000004\.dat: signal file is missing"):
        read_record(base)


def test_uncalibrated_gain_rejected(tmp_path):
    base = write_mimic_record(tmp_path, 10000032, 40000007, random_frames(10, n=100))
    hea = base.with_suffix(".hea")
    lines = hea.read_text().splitlines()
    lines[3] = lines[3].replace("200.0(0)/mV", "0(0)/mV")
    hea.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match="uncalibrated"):
        read_record(base)


def test_window_outside_record(tmp_path):
    rec = read_record(write_mimic_record(tmp_path, 10000032, 40000008, random_frames(11, n=100)))
    with pytest.raises(RecordError, match="outside"):
        rec.window(50, 51)
    with pytest.raises(RecordError, match="outside"):
        read_record(rec.path, start=90, stop=101)


def test_dicom_waveform(pydicom_ecg_path):
    import pydicom

    from ecgkt.data import read_dicom

    rec = read_dicom(pydicom_ecg_path)
    assert rec.signal.shape == (12, 10000) and rec.fs == 1000 and rec.signal.dtype == np.int16
    ref = pydicom.dcmread(pydicom_ecg_path).waveform_array(0)  # µV, DICOM order I..V6
    np.testing.assert_allclose(rec.physical() * 1000.0, ref.T, atol=1e-3)
    assert not (rec.signal == INVALID).any()


def test_lead_name_spellings():
    from ecgkt.data.wfdb_io import lead_index

    assert [lead_index(n) for n in ("i", "AVR", "aVl", " V6 ", "DII", "d3", "Lead V1", "lead aVF")] == \
        [0, 3, 4, 11, 1, 2, 6, 5]
    assert lead_index("vx") is None and lead_index("MLII") is None and lead_index("leadx") is None
