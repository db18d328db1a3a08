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
    lines = [f"{study_id} 12 {FS} {T} {when:%H:%M:%S %d/%m/%Y}"]
    lines += [f"{study_id}.dat 16 200.0(0)/mV 16 0 {first} {chk} 0 {lead}"
              for lead, first, chk in zip(MIMIC_LEADS, frames[0].tolist(), np.asarray(sums).tolist())]
    lines.append(f"# <subject_id>: {subject_id}")
    return "\n".join(lines) + "\n"


def record_path(subject_id: int, study_id: int) -> str:
    """MIMIC path of a record, without extension, relative to the mimic-iv-ecg root."""
    return f"files/p{str(subject_id)[:4]}/p{subject_id}/s{study_id}/{study_id}"


def write_record(root: Path, rel: str, header: str, frames: np.ndarray) -> None:
    """Write ``rel``.hea and ``rel``.dat (format 16: little-endian int16); ``frames`` is (T, 12),
    one row per sample, as the .dat interleaves the signals."""
    base = f"{root}/{rel}"  # strings and binary files: a third less CPU than Path, tofile and text mode
    folder = os.path.dirname(base)
    try:  # the study folder is new; its subject folders usually exist already
        os.mkdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        pass
    with open(base + ".dat", "wb") as f:
        f.write(np.ascontiguousarray(frames, dtype="<i2"))
    with open(base + ".hea", "wb") as f:
        f.write(header.encode())


# ------------------------------------------------------------------------------------------------
PART_RECORDS = 50  # records per task: a chunk's parts render alone (each redraws the chunk's stream)


def _chunk(sim: Simulation, c: int):
    """Rows (a slice), seeded random stream and beat-model parameters of chunk ``c``."""
    size = sim.config.chunk_records
    rows = slice(c * size, min((c + 1) * size, len(sim.ecgs)))
    p = {k: (v[rows] if isinstance(v, np.ndarray) and len(v) == len(sim.ecgs) else v) for k, v in sim.ecg.items()}
    return rows, np.random.default_rng([sim.seed, 7919, c]), p


def _n_chunks(sim: Simulation) -> int:
    return -(-len(sim.ecgs) // sim.config.chunk_records)


def beat_stats(sim: Simulation) -> np.ndarray:
    """Per ECG (m, 2): the mean RR in ms of the beats starting inside the record and the number of
    ventricular premature beats among them. The beat times are the first draws of each chunk's
    stream, so this needs no rendering."""
    stats = []
    for c in range(_n_chunks(sim)):
        _, rng, p = _chunk(sim, c)
        on, pvc = beat_model.beat_times(rng, p)
        inside = (on >= 0) & (on < beat_model.N_SAMPLES)
        onsets = on * (1000.0 / FS)
        rr = [np.diff(o[m]).mean() if m.sum() > 1 else p["rr"][i] for i, (o, m) in enumerate(zip(onsets, inside))]
        stats.append(np.stack([rr, (pvc & inside).sum(axis=1)], axis=1))
    return np.concatenate(stats)


def _write_part(sim: Simulation, ecg_root: Path, c: int, part: slice, bank: np.ndarray) -> int:
    """Render and write the records ``part`` (rows within chunk ``c``); returns their number."""
    rows, rng, p = _chunk(sim, c)
    e = sim.ecgs
    subj, study = e["subject_id"].to_numpy()[rows], e["study_id"].to_numpy()[rows]
    when = pd.to_datetime(e["ecg_time_s"].to_numpy()[rows], unit="s").to_pydatetime()
    blocks = beat_model.render(rng, p, sim.config, e["noise_boost"].to_numpy()[rows], e["nan_run"].to_numpy()[rows],
                               e["flat_lead"].to_numpy()[rows], bank, part)
    for first, frames, checksums in blocks:  # frames (b, T, 12): the .dat sample order
        for j, (f, chk) in enumerate(zip(frames, checksums), start=first):
            write_record(ecg_root, record_path(subj[j], study[j]), header_text(study[j], subj[j], when[j], f, chk), f)
    return part.stop - part.start


_WORKER: dict = {}


def _worker_init(sim, ecg_root, bank):
    _WORKER.update(sim=sim, ecg_root=ecg_root, bank=bank)


def _worker_part(c, part):
    return _write_part(_WORKER["sim"], _WORKER["ecg_root"], c, part, _WORKER["bank"])


def write_waveforms(sim: Simulation, ecg_root: Path, progress: bool = True, jobs: int = 1, meanwhile=None) -> None:
    """Render and write every record (``jobs`` processes: this one and jobs - 1 workers).

    Chunks draw from their own seeded streams, so the files do not depend on ``jobs``.
    ``meanwhile()`` (work that does not need the records, e.g. the tables) runs in this process
    while the workers render; then this process renders the parts no worker has started, from
    the last one back, so that both finish together.
    """
    from tqdm import tqdm

    size, tasks = sim.config.chunk_records, []
    for c in range(_n_chunks(sim)):
        n = min(size, len(sim.ecgs) - c * size)
        tasks += [(c, slice(a, min(a + PART_RECORDS, n))) for a in range(0, n, PART_RECORDS)]
    bank = beat_model._noise_bank(sim.seed)
    ecg_root.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(sim.ecgs), desc="synth ECGs", unit="rec", disable=not progress) as bar:
        if jobs <= 1 or len(tasks) < 2 * jobs:  # few parts: a worker would cost about what it saves
            for task in tasks:
                bar.update(_write_part(sim, ecg_root, *task, bank))
            if meanwhile is not None:
                meanwhile()
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(min(jobs - 1, len(tasks)), mp_context=ctx, initializer=_worker_init,
                                 initargs=(sim, ecg_root, bank)) as pool:
            futures = [pool.submit(_worker_part, *task) for task in tasks]
            if meanwhile is not None:
                meanwhile()
            for task, f in zip(tasks[::-1], futures[::-1]):
                if not f.cancel():  # a worker has it, and every part before it
                    break
                bar.update(_write_part(sim, ecg_root, *task, bank))
            for f in futures:
                if not f.cancelled():
                    bar.update(f.result())


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


