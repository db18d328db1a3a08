"""Streaming read of MIMIC-IV ``hosp/labevents.csv.gz`` (~118M rows) in bounded memory.

The file is decoded block by block with ``pyarrow.csv.open_csv``; each block is reduced to the
needed columns and the item ids in use before the next one is read, so the memory held is one
block plus the rows kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ECGKTError

LAB_COLUMNS = ("subject_id", "itemid", "charttime", "value", "valuenum", "ref_range_lower", "ref_range_upper")


def read_labevents(path, itemids, block_size: int = 16 << 20, progress: bool = False) -> pd.DataFrame:
    """Rows of ``labevents.csv(.gz)`` whose ``itemid`` is in ``itemids``.

    Returns a DataFrame with LAB_COLUMNS: ``charttime`` as datetime64, numbers as float64, and
    ``value`` (text) kept only where ``valuenum`` is empty (text results such as ``<0.01``).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    path = Path(path)
    if not path.is_file():
        raise ECGKTError(f"{path}: labevents file not found")
    wanted = pa.array(sorted({int(i) for i in itemids}), type=pa.int32())
    types = {"subject_id": pa.int32(), "itemid": pa.int32(),  # MIMIC ids fit; halves their memory
             "charttime": pa.timestamp("s"), "value": pa.string(), "valuenum": pa.float64(), "ref_range_lower": pa.float64(),
             "ref_range_upper": pa.float64()}
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=block_size),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),  # free-text comments span lines
            convert_options=pacsv.ConvertOptions(include_columns=list(LAB_COLUMNS), column_types=types,
                                                 strings_can_be_null=True),
        )
    except (pa.ArrowException, KeyError, OSError, EOFError) as e:
        raise ECGKTError(f"{path}: not a MIMIC labevents table ({' '.join(str(e).split())})") from None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="labevents", unit=" rows", unit_scale=True, disable=None)
    kept = []
    try:
        for batch in reader:
            mask = pc.is_in(batch.column("itemid"), value_set=wanted)
            part = batch.filter(mask)
            if part.num_rows:
                for column in ("subject_id", "charttime"):  # a lab value no ECG can be paired with
                    if part.column(column).null_count:
                        raise ECGKTError(f"{path}: {part.column(column).null_count} row(s) of a used itemid have "
                                         f"an empty {column}")
                # text only matters where there is no number; dropping the rest saves most memory
                value = pc.if_else(pc.is_null(part.column("valuenum")), part.column("value"),
                                   pa.scalar(None, pa.string()))
                part = part.set_column(part.schema.get_field_index("value"), "value", value)
                kept.append(pa.Table.from_batches([part]))
            if bar is not None:
                bar.update(batch.num_rows)
    except (pa.ArrowException, OSError, EOFError) as e:  # malformed rows, a truncated .gz
        raise ECGKTError(f"{path}: cannot parse labevents ({' '.join(str(e).split())})") from None
    finally:
        if bar is not None:
            bar.close()
    if not kept:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(LAB_COLUMNS, ["int32", "int32", "datetime64[ns]", "string",
                                               "float64", "float64", "float64"])})
    table = pa.concat_tables(kept)
    del kept
    # self_destruct frees each Arrow column as it is converted: peak ~ one copy, not two
    df = table.to_pandas(self_destruct=True, split_blocks=True,
                         types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
    del table
    df["charttime"] = df["charttime"].astype("datetime64[ns]")
    return df


_NUMBER = r"^\s*(?:[<>]=?|=)?\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$"


def numeric_values(df: pd.DataFrame) -> np.ndarray:
    """``valuenum``, or the number in a text result (``<0.01`` -> 0.01, ``>1000`` -> 1000) where
    ``valuenum`` is empty; NaN for de-identified or free-text results (``___``)."""
    out = df["valuenum"].to_numpy(dtype=np.float64, copy=True)
    missing = np.isnan(out)
    if missing.any() and "value" in df:
        text = df["value"][missing].astype("string")
        parsed = pd.to_numeric(text.str.extract(_NUMBER, expand=False), errors="coerce")
        out[missing] = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    return out
