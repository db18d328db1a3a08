"""MIMIC-IV-ECG: WFDB records (rendered in chunks, optionally in 2 processes), record_list.csv,
machine_measurements.csv and its data dictionary, waveform_note_links.csv."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import beat_model
from .beat_model import FS, MIMIC_LEADS
from .coding import machine_statements
from .common import timestamps, write_csv
from .population import Simulation
from .physiology import frontal_axis, qrs_net_vector

MISSING = 29999  # machine_measurements sentinel
N_REPORTS = 18


def header_text(study_id: int, subject_id: int, when, frames: np.ndarray, checksums=None) -> str:
    """WFDB header in MIMIC-IV-ECG layout for one record; ``frames`` is (T, 12) int16."""
    T = frames.shape[0]
    sums = frames.sum(axis=0, dtype=np.int64) % 65536 if checksums is None else checksums
    lines = [f"{study_id} 12 {FS} {T} {when:%H:%M:%S} {when:%d/%m/%Y}"]
    for lead, first, chk in zip(MIMIC_LEADS, frames[0], sums):
        lines.append(f"{study_id}.dat 16 200.0(0)/mV 16 0 {int(first)} {int(chk)} 0 {lead}")
    lines.append(f"# <subject_id>: {subject_id}")
    return "\n".join(lines) + "\n"


def record_path(subject_id: int, study_id: int) -> str:
    """MIMIC path of a record, without extension, relative to the mimic-iv-ecg root."""
    return f"files/p{str(subject_id)[:4]}/p{subject_id}/s{study_id}/{study_id}"


def write_record(root: Path, rel: str, header: str, frames: np.ndarray) -> None:
    """Write ``rel``.hea and ``rel``.dat (format 16: little-endian int16); ``frames`` is (T, 12),
    one row per sample, as the .dat interleaves the signals."""
    base = root / rel
    try:  # the study folder is new; its subject folders usually exist already
        os.mkdir(base.parent)
    except FileNotFoundError:
        os.makedirs(base.parent, exist_ok=True)
    except FileExistsError:
        pass
    frames.astype("<i2", copy=False).tofile(str(base) + ".dat")
    with open(str(base) + ".hea", "w", newline="\n") as f:
        f.write(header)


# ------------------------------------------------------------------------------------------------
def render_chunk(sim: Simulation, c: int, rows: np.ndarray, bank: np.ndarray):
    """int16 records (len(rows), 5000, 12) of one chunk, each record's mean RR in ms and its
    number of ventricular premature beats."""
    rng = np.random.default_rng([sim.seed, 7919, c])
    p = {k: (v[rows] if isinstance(v, np.ndarray) and len(v) == len(sim.ecgs) else v) for k, v in sim.ecg.items()}
    sig8, onsets, n_pvc = beat_model.render_clean(rng, p)
    boost = sim.ecgs["noise_boost"].to_numpy()[rows]
    sig8 = beat_model.add_noise(rng, sig8, sim.config, boost=boost, bank=bank)
    adu = beat_model.quantise(beat_model.derive_leads(sig8))
    beat_model.add_artifacts(rng, adu, sim.ecgs["nan_run"].to_numpy()[rows], sim.ecgs["flat_lead"].to_numpy()[rows])
    inside = (onsets >= 0) & (onsets < beat_model.N_SAMPLES * 1000 / beat_model.FS)
    rr = np.array([np.diff(o[m]).mean() if m.sum() > 1 else p["rr"][i] for i, (o, m) in enumerate(zip(onsets, inside))])
    return adu, np.stack([rr, n_pvc], axis=1)


def _write_chunk(sim: Simulation, ecg_root: Path, c: int, bank: np.ndarray) -> tuple[int, np.ndarray]:
    """Render and write chunk ``c``; returns (c, per record: mean RR, premature beats)."""
    size = sim.config.chunk_records
    rows = np.arange(c * size, min((c + 1) * size, len(sim.ecgs)))
    frames, stats = render_chunk(sim, c, rows, bank)  # (n, T, 12): the .dat sample order
    # per-lead sums: int32 is exact (|sum| <= 5000 * 32768 < 2**31) and einsum reduces it fastest
    checksums = np.einsum("ntl->nl", frames.astype(np.int32)) % 65536
    subj, study = sim.ecgs["subject_id"].to_numpy(), sim.ecgs["study_id"].to_numpy()
    when = pd.to_datetime(sim.ecgs["ecg_time_s"].to_numpy()[rows], unit="s")
    for j, i in enumerate(rows):
        hea = header_text(study[i], subj[i], when[j], frames[j], checksums[j])
        write_record(ecg_root, record_path(subj[i], study[i]), hea, frames[j])
    return c, stats


_WORKER: dict = {}


def _worker_init(sim, ecg_root, bank):
    _WORKER.update(sim=sim, ecg_root=ecg_root, bank=bank)


def _worker_chunk(c):
    return _write_chunk(_WORKER["sim"], _WORKER["ecg_root"], c, _WORKER["bank"])


def write_waveforms(sim: Simulation, ecg_root: Path, progress: bool = True, jobs: int = 1,
                    meanwhile=None) -> np.ndarray:
    """Render and write every record (``jobs`` processes); returns per ECG (m, 2): the mean RR in
    ms and the number of ventricular premature beats in the record.

    Chunks draw from their own seeded streams, so the files do not depend on ``jobs``.
    ``meanwhile()`` (work that does not need the records, e.g. the clinical tables) runs in this
    process while the worker processes render.
    """
    from tqdm import tqdm

    m = len(sim.ecgs)
    size = sim.config.chunk_records
    n_chunks = -(-m // size)
    stats = np.empty((m, 2))
    bank = beat_model._noise_bank(sim.seed)
    ecg_root.mkdir(parents=True, exist_ok=True)
    with tqdm(total=m, desc="synth ECGs", unit="rec", disable=not progress) as bar:
        def done(c, chunk):
            stats[c * size:c * size + len(chunk)] = chunk
            bar.update(len(chunk))

        if jobs <= 1 or n_chunks < 2:
            for c in range(n_chunks):
                done(*_write_chunk(sim, ecg_root, c, bank))
            if meanwhile is not None:
                meanwhile()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(min(jobs, n_chunks), mp_context=ctx, initializer=_worker_init,
                                     initargs=(sim, ecg_root, bank)) as pool:
                futures = [pool.submit(_worker_chunk, c) for c in range(n_chunks)]
                if meanwhile is not None:
                    meanwhile()
                for f in futures:
                    done(*f.result())
    return stats


# ------------------------------------------------------------------------------------------------
def _machine_measurements(sim: Simulation, rr: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng([sim.seed, 31, 1])
    p, e = sim.ecg, sim.ecgs
    m = len(e)
    qo = rng.integers(180, 232, m)
    jit = lambda: np.rint(rng.normal(0, 1.5, m)).astype(int)  # noqa: E731 - the cart's own error
    p_on = qo - np.rint(p["pr"]).astype(int) + jit()
    p_end = p_on + np.rint(p["p_dur"]).astype(int) + jit()
    qrs_end = qo + np.rint(p["qrs"]).astype(int) + jit()
    t_end = qo + np.rint(p["qt"]).astype(int) + jit()
    p_axis = np.rint(frontal_axis(p["p_vec"])).astype(int)
    qrs_axis = np.rint(frontal_axis(qrs_net_vector(p))).astype(int)
    t_axis = np.rint(frontal_axis(p["t_vec"])).astype(int)
    af = p["af"]
    p_on, p_end, p_axis = (np.where(af, MISSING, x) for x in (p_on, p_end, p_axis))
    t_end = np.where(rng.random(m) < 0.015, MISSING, t_end)
    for ax in (p_axis, qrs_axis, t_axis):
        ax[rng.random(m) < 0.01] = MISSING
    stmts = machine_statements(rng, p, e["noisy"].to_numpy(), sim.config)
    reports = np.full((m, N_REPORTS), "", dtype=object)
    gap = rng.random(m) < 0.05
    for i, s in enumerate(stmts):
        if gap[i] and len(s) > 1:  # statements with an empty field between them
            at = int(rng.integers(1, len(s)))
            s = s[:at] + [""] + s[at:]
        reports[i, :len(s[:N_REPORTS])] = s[:N_REPORTS]
    df = pd.DataFrame({"subject_id": e["subject_id"], "study_id": e["study_id"], "cart_id": e["cart_id"],
                       "ecg_time": timestamps(e["ecg_time_s"].to_numpy())})
    for k in range(N_REPORTS):
        df[f"report_{k}"] = reports[:, k]
    df["bandwidth"] = "0.005-150 Hz"
    df["filtering"] = np.where(rng.random(m) < 0.9, "60 Hz notch Baseline filter", "Baseline filter")
    df["rr_interval"] = np.rint(rr).astype(int)
    df["p_onset"], df["p_end"], df["qrs_onset"], df["qrs_end"], df["t_end"] = p_on, p_end, qo, qrs_end, t_end
    df["p_axis"], df["qrs_axis"], df["t_axis"] = p_axis, qrs_axis, t_axis
    return df


def write_ecg_tables(sim: Simulation, rr: np.ndarray, root: Path) -> None:
    e = sim.ecgs
    paths = [record_path(s, st) for s, st in zip(e["subject_id"], e["study_id"])]
    times = timestamps(e["ecg_time_s"].to_numpy())
    record_list = pd.DataFrame({"subject_id": e["subject_id"], "study_id": e["study_id"],
                                "file_name": e["study_id"], "ecg_time": times, "path": paths})
    order = np.lexsort((e["ecg_time_s"].to_numpy(), e["subject_id"].to_numpy()))
    write_csv(record_list.iloc[order], root / "record_list.csv", gz=False)
    write_csv(_machine_measurements(sim, rr).iloc[order], root / "machine_measurements.csv", gz=False)
    cols = ["subject_id", "study_id", "cart_id", "ecg_time"] + [f"report_{k}" for k in range(N_REPORTS)] + [
        "bandwidth", "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis",
        "qrs_axis", "t_axis"]
    desc = ["Patient identifier", "ECG study identifier", "ECG cart identifier", "Time of the ECG"] + [
        f"Machine-generated report statement {k}" for k in range(N_REPORTS)] + [
        "Bandwidth of the recording", "Filters applied", "RR interval (ms)", "P wave onset (ms)", "P wave end (ms)",
        "QRS onset (ms)", "QRS end (ms)", "T wave end (ms)", "P axis (degrees)", "QRS axis (degrees)",
        "T axis (degrees)"]
    write_csv(pd.DataFrame({"variable": cols, "description": desc}),
               root / "machine_measurements_data_dictionary.csv", gz=False)
    rng = np.random.default_rng([sim.seed, 31, 2])
    linked = np.flatnonzero(rng.random(len(e)) < 0.4)
    subj = e["subject_id"].to_numpy()[linked]
    seq = pd.Series(subj).groupby(subj).cumcount().to_numpy() + 1  # the subject's k-th ECG note
    links = pd.DataFrame({"subject_id": subj, "study_id": e["study_id"].to_numpy()[linked],
                          "waveform_path": np.array(paths, dtype=object)[linked],
                          "note_id": [f"{s}-EK-{k}" for s, k in zip(subj, seq)], "note_seq": seq,
                          "charttime": times[linked]})
    write_csv(links, root / "waveform_note_links.csv", gz=False)


