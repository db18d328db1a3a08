"""Small helpers shared by the table writers: ids, time stamps, deterministic CSV/gzip."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd


def unique_ids(rng, lo: int, hi: int, n: int) -> np.ndarray:
    """``n`` distinct random integers in [lo, hi), in random order."""
    ids = np.unique(rng.integers(lo, hi, int(n * 1.1) + 10))
    while len(ids) < n:
        ids = np.unique(np.r_[ids, rng.integers(lo, hi, n)])
    return rng.permutation(ids)[:n]


def timestamps(t_s: np.ndarray) -> np.ndarray:
    """Seconds since the epoch -> 'YYYY-MM-DD HH:MM:SS' strings (empty where NaN)."""
    t = np.asarray(t_s, dtype=float)
    ok = np.isfinite(t)
    out = np.full(t.shape, "", dtype=object)
    if ok.any():
        s = np.datetime_as_string(t[ok].astype("int64").astype("datetime64[s]"), unit="s")
        out[ok] = np.char.replace(s, "T", " ")
    return out


def dates(t_s: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(np.asarray(t_s, dtype="int64").astype("datetime64[s]"), unit="D")


def year_start(year) -> np.ndarray:
    return (np.asarray(year) - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype("int64")


def write_csv(df: pd.DataFrame, path: Path, gz: bool) -> None:
    """CSV (optionally gzip with a fixed header mtime, so the bytes depend only on the content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = df.to_csv(index=False, lineterminator="\n").encode()
    if gz:
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                     compresslevel=6) as f:
            f.write(text)
    else:
        path.write_bytes(text)


def fmt(values: np.ndarray, decimals: int) -> np.ndarray:
    return np.char.mod(f"%.{decimals}f", np.round(values, decimals))


