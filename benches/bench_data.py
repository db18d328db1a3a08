"""The data layer: per-record reads (signal store vs wfdb), the signal-store DataLoader with 0/2/4 workers
against a copy of the same bytes, `prepare` against the record count, and the labevents reader against pandas.

The store and the raw records are the session's synthetic dataset (conftest). Their files were just
written, so the page cache is warm for every contender alike: these are CPU costs, not disk reads."""
import gzip
import shutil

import numpy as np
import pytest
from torch.utils.data import DataLoader, RandomSampler

from _bench import measure, need

LOADER_BATCH = 256


def _raw_records(store_dir):
    from ecgkt.data import ECGStore

    return [str(p) for p in ECGStore(store_dir).cohort["record"]]


@pytest.mark.parametrize("provider", ["ecgkt-store", "ecgkt-read_record", "wfdb"])
def test_record_read(benchmark, sizes, store, provider):
    paths = _raw_records(store)[:200]
    if provider == "ecgkt-store":
        from ecgkt.data import ECGStore

        st = ECGStore(store)
        fn = lambda: [st.record(i) for i in range(len(paths))]  # noqa: E731
    elif provider == "ecgkt-read_record":
        from ecgkt.data import read_record

        fn = lambda: [read_record(p) for p in paths]  # noqa: E731
    else:
        wfdb = need("wfdb")
        fn = lambda: [wfdb.rdrecord(p) for p in paths]  # noqa: E731
    measure(benchmark, fn, kernel="record_read", provider=provider, x=len(paths), x_name="records",
            items=len(paths), unit="records/s", rounds=sizes.rounds)


@pytest.mark.parametrize("provider", ["ecgkt", "copy"])
def test_loader(benchmark, sizes, store, workers, provider):
    """ECGDataset + DataLoader(batch 256, random order, ecgkt.data.collate): every field of every item
    (int16 signal, gains, tabular row, labels); the floor gathers the same signal rows into one array."""
    from ecgkt.data import ECGDataset, collate

    n = LOADER_BATCH * sizes.loader_batches
    ds = ECGDataset(store)
    if provider == "copy":
        if workers:
            pytest.skip("the copy floor is one process (num_workers=0)")
        signals = ds.store.signals
        order = np.random.default_rng(0).integers(0, len(ds), n)
        out = np.empty((LOADER_BATCH, *signals.shape[1:]), dtype=signals.dtype)

        def fn():
            for b in range(0, n, LOADER_BATCH):
                np.take(signals, ds.signal_rows[order[b:b + LOADER_BATCH]], axis=0, out=out)
    else:
        sampler = RandomSampler(ds, replacement=True, num_samples=n)
        loader = DataLoader(ds, batch_size=LOADER_BATCH, sampler=sampler, num_workers=workers, collate_fn=collate,
                            persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

        def fn():
            count = 0
            for batch in loader:
                count += batch["signal"].shape[0]
            return count
    measure(benchmark, fn, kernel="loader", provider=provider, x=workers, x_name="workers", items=n, unit="ECG/s",
            rounds=sizes.rounds)


@pytest.fixture(scope="session")
def raw_sets(workdir):
    """Synthetic raw datasets by patient count, generated once per session."""
    made = {}

    def get(patients: int):
        if patients not in made:
            from ecgkt.data import generate

            root = workdir / f"raw{patients}"
            generate(root, patients=patients, seed=1, progress=False)
            made[patients] = root
        return made[patients]
    return get


@pytest.mark.parametrize("provider", ["ecgkt", "wfdb-read"])
def test_prepare(benchmark, sizes, raw_sets, workdir, prepare_patients, provider):
    """`prepare` (2 workers): cohort join + every record converted into the store, against a plain loop of
    wfdb.rdrecord into one int16 array (the least any conversion with wfdb does)."""
    from ecgkt.data import CohortConfig, prepare

    root = raw_sets(prepare_patients)
    headers = sorted(str(p)[:-4] for p in (root / "mimic-iv-ecg").rglob("*.hea"))
    out = workdir / f"store-p{prepare_patients}"
    if provider == "ecgkt":
        def fn():
            prepare(root, out, CohortConfig(min_lab_count=1, dx_min_count=1), workers=2, progress=False)
        setup = lambda: shutil.rmtree(out, ignore_errors=True)  # noqa: E731
    else:
        wfdb = need("wfdb")
        signals = np.empty((len(headers), 12, 5000), dtype=np.int16)

        def fn():
            for i, h in enumerate(headers):
                r = wfdb.rdrecord(h, physical=False)
                signals[i] = r.d_signal[:5000].T
        setup = None
    measure(benchmark, fn, kernel="prepare", provider=provider, x=len(headers), x_name="records",
            items=len(headers), unit="records/s", rounds=sizes.rounds if sizes.quick else 2, setup=setup)


LAB_HEADER = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
              "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag",
              "priority", "comments"]


def write_labevents(path, rows: int, seed: int = 0) -> None:
    """A MIMIC-shaped labevents.csv.gz: ~200 item ids (those in use among them), text results, empty fields."""
    import pandas as pd

    from ecgkt.data.mimic import DEFAULT_LAB_TESTS

    rng = np.random.default_rng(seed)
    used = np.array(sorted({i for ids in DEFAULT_LAB_TESTS.values() for i in ids}))
    pool = np.concatenate([used, np.setdiff1d(np.arange(50800, 51000), used)])
    weights = np.where(np.isin(pool, used), 3.0, 1.0)
    num = np.round(rng.lognormal(1.0, 1.0, rows), 2)
    text = rng.random(rows) < 0.02
    when = (np.datetime64("2150-01-01T00:00:00", "s")
            + rng.integers(0, 40 * 365 * 86400, rows).astype("timedelta64[s]")).astype(str)
    when = np.char.replace(when, "T", " ")
    df = pd.DataFrame({
        "labevent_id": np.arange(rows), "subject_id": rng.integers(10_000_000, 19_999_999, rows),
        "hadm_id": np.where(rng.random(rows) < 0.4, np.nan, rng.integers(20_000_000, 29_999_999, rows)),
        "specimen_id": rng.integers(0, 99_999_999, rows), "itemid": rng.choice(pool, rows, p=weights / weights.sum()),
        "order_provider_id": "", "charttime": when, "storetime": when,
        "value": np.where(text, "___", num.astype(str)), "valuenum": np.where(text, np.nan, num), "valueuom": "mEq/L",
        "ref_range_lower": 3.5, "ref_range_upper": 5.1, "flag": np.where(rng.random(rows) < 0.2, "abnormal", ""),
        "priority": "ROUTINE", "comments": "",
    }, columns=LAB_HEADER)
    with gzip.open(path, "wt", compresslevel=1, newline="") as f:
        df.to_csv(f, index=False)


@pytest.fixture(scope="session")
def labevents_file(workdir, sizes):
    path = workdir / "labevents.csv.gz"
    write_labevents(path, sizes.lab_rows)
    return path


@pytest.mark.parametrize("provider", ["ecgkt", "pandas"])
def test_labevents(benchmark, sizes, labevents_file, provider):
    """labevents.csv.gz filtered to the lab tests in use: ecgkt.data.read_labevents (pyarrow streaming)
    against pandas.read_csv in chunks of 1M rows + isin + to_datetime."""
    import pandas as pd

    from ecgkt.data import read_labevents
    from ecgkt.data.mimic import DEFAULT_LAB_TESTS

    ids = [i for v in DEFAULT_LAB_TESTS.values() for i in v]
    if provider == "ecgkt":
        fn = lambda: read_labevents(labevents_file, ids)  # noqa: E731
    else:
        cols = ["subject_id", "itemid", "charttime", "value", "valuenum", "ref_range_lower", "ref_range_upper"]

        def fn():
            parts = [c[c["itemid"].isin(ids)] for c in pd.read_csv(labevents_file, usecols=cols, chunksize=1_000_000)]
            df = pd.concat(parts)
            df["charttime"] = pd.to_datetime(df["charttime"])
            return df
    measure(benchmark, fn, kernel="labevents", provider=provider, x=sizes.lab_rows, x_name="rows",
            items=sizes.lab_rows, unit="rows/s", rounds=sizes.rounds if sizes.quick else 3)
