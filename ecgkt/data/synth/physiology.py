"""The physiology rules that turn a latent encounter state into beat-model parameters.

Every arrow is a named rule of :mod:`.rules` with a scale in ``SynthConfig.rules`` (1 = as
documented in docs/synthetic_data.md, 0 = off); the numbers are generator choices.
"""
from __future__ import annotations

import numpy as np


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# ECG morphology
# --------------------------------------------------------------------------------------------
# Heart-vector frame: x = patient's left, y = inferior (feet), z = anterior.
TERRITORIES = ("anterior", "inferior", "lateral")
_TERRITORY_VEC = np.array([[0.25, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, -0.35, 0.25]])


def _frontal(theta_deg, z, mag):
    """Dipoles (n, 3) from a frontal axis angle, an anterior component and a magnitude."""
    th = np.deg2rad(theta_deg)
    v = _unit(np.stack([np.cos(th), np.sin(th), np.broadcast_to(z, th.shape)], axis=-1))
    return v * np.asarray(mag)[:, None]


def ecg_parameters(rng, e, cfg) -> dict[str, np.ndarray]:
    """Beat-model parameters of each ECG from its encounter state ``e`` (rules applied here).

    Times in ms measured from QRS onset; amplitudes as 3-D dipoles in mV (see ``beat_model``).
    """
    r = cfg.rules
    n = len(e["k"])
    k, ca, mg, age, female = e["k"], e["ca"], e["mg"], e["age"], e["female"]
    log_bnp = np.log10(e["bnp"])
    over40 = np.clip(age - 40, 0, None)
    hypo_t = e["hypothermia"] * r["temperature_hr"]

    # rhythm
    af = rng.random(n) < r["bnp_af"] * _sigmoid(2.0 * (log_bnp - 3.8))
    hr = e["base_hr"] + rng.normal(0, 4, n)
    hr += r["temperature_hr"] * 9 * np.clip(e["temp_c"] - 37, 0, None)
    hr += r["anemia_hr"] * 4 * np.clip(11 - e["hb"], 0, None)
    hr += r["bnp_qrs"] * 5 * np.clip(log_bnp - 2.5, 0, None)
    hr += r["glucose_hypo"] * 10 * (e["glucose"] < 70)
    hr += r["acute_illness_hr"] * (12 * e["sepsis_sev"] + 6 * e["mi"])
    hr += r["diabetes_hr"] * 4 * e["diabetes"]
    hr = np.where(hypo_t > 0, hr - hypo_t * 25, hr)
    hr = np.where(af, rng.uniform(75, 135, n), hr)
    hr = np.clip(hr, 38, 165)
    rr = 60000.0 / hr

    # conduction (ms)
    k_hi = np.clip(k - 6.5, 0, None)
    cond = r["conduction_ecg"]
    lbbb = (rng.random(n) < cond) & e["lbbb"]
    rbbb = (rng.random(n) < cond) & e["rbbb"] & ~lbbb
    avb1 = (rng.random(n) < cond) & e["avb1"]
    pr = e["pr0"] + r["age_ecg"] * 0.5 * over40 + avb1 * rng.uniform(55, 130, n)
    pr += r["potassium_conduction"] * 15 * k_hi + hypo_t * 40
    pr = np.clip(pr, 100, 380)
    p_dur = np.clip(rng.normal(100, 10, n), 70, 135)
    qrs = e["qrs_width0"] + r["bnp_qrs"] * 8 * np.clip(log_bnp - 2, 0, None)
    qrs += r["potassium_conduction"] * 15 * k_hi + hypo_t * 25
    qrs = np.where(lbbb, rng.uniform(130, 165, n), np.where(rbbb, rng.uniform(122, 150, n), qrs))
    qrs = np.clip(qrs, 66, 220)

    # QTc (Fridericia) with electrolyte rules; QT = QTc * RR^(1/3) + extra QRS width
    qtc = e["base_qtc"] + r["sex_qtc"] * 12 * female
    qtc -= r["potassium_qtc"] * 10 * (k - 4.2)
    qtc -= r["calcium_qtc"] * 22 * (ca - 9.4)
    qtc += r["magnesium_qtc"] * 24 * np.clip(2.0 - mg, 0, None)
    qtc += r["glucose_hypo"] * 30 * np.clip((70 - e["glucose"]) / 30, 0, 1)
    qtc += hypo_t * 60
    qtc += r["ckd_ecg"] * 20 * e["ckd_sev"]
    qtc += r["cirrhosis_qtc"] * 15 * e["liver"]
    qt = qtc * (rr / 1000.0) ** (1 / 3) + np.clip(qrs - 95, 0, None) * 0.8
    qt = np.clip(qt, qrs + 150, 700)

    # voltage and axes
    volt = e["voltage0"] * (1 - r["age_ecg"] * 0.004 * over40)
    volt *= np.clip(1 - r["bmi_voltage"] * 0.015 * (e["bmi"] - 25), 0.55, 1.25)
    lvh_p = _sigmoid(1.6 * (log_bnp - 3.4) + 0.03 * (e["sbp"] - 140) + r["ckd_ecg"] * 1.5 * e["ckd_sev"])
    lvh = rng.random(n) < r["bnp_lvh"] * lvh_p
    volt = volt * np.where(lvh, rng.uniform(1.6, 2.2, n), 1.0)
    axis = e["qrs_axis0"] - r["age_ecg"] * 0.4 * over40 - 25 * lbbb
    p_amp = np.clip(rng.normal(0.15, 0.03, n), 0.06, 0.3)
    p_amp *= np.clip(1 - r["potassium_conduction"] * 0.4 * k_hi, 0, 1)
    p_amp = np.where(af, 0.0, p_amp)

    # T wave amplitude and shape
    t_amp = np.clip(rng.normal(0.42, 0.09, n), 0.15, 0.8)
    t_sig_scale = np.ones(n)
    k_over5 = np.clip(k - 5, 0, None)
    t_amp *= 1 + r["potassium_t"] * 0.5 * k_over5
    t_sig_scale *= np.clip(1 - r["potassium_t"] * 0.12 * k_over5, 0.55, 1)
    t_amp *= np.clip(1 - r["potassium_low"] * 0.35 * np.clip(3.5 - k, 0, None), 0.3, 1)
    t_amp *= np.clip(1 - r["magnesium_qtc"] * 0.3 * np.clip(1.8 - mg, 0, None), 0.5, 1)
    u_amp = 0.03 + r["potassium_low"] * 0.2 * np.clip((3.3 - k) / 0.9, 0, 1)
    u_amp += r["magnesium_qtc"] * 0.08 * np.clip((1.7 - mg) / 0.6, 0, 1)
    st_mag = -r["potassium_low"] * 0.1 * np.clip((3.3 - k) / 0.8, 0, 1)  # along the T direction
    st_mag -= r["anemia_hr"] * 0.05 * (e["hb"] < 7)

    # injury: territory ST vector, T inversion, Q waves
    p_inj = r["troponin_st"] * _sigmoid(3.5 * (np.log10(e["tnt"]) + 1.0))
    injury = (rng.random(n) < np.clip(p_inj, 0, 1)) & (r["troponin_st"] > 0)
    territory = np.where(injury, rng.integers(0, 3, n), -1)
    terr_vec = _unit(_TERRITORY_VEC)[np.clip(territory, 0, 2)]
    st_elev = np.where(injury, rng.uniform(0.1, 0.3, n), 0.0) * min(1.0, r["troponin_st"])
    old_injury = injury & (np.nan_to_num(e["mi_age_h"], nan=0) > 12)
    pathologic_q = old_injury | ((rng.random(n) < 0.25) & e["cad"] & (r["troponin_st"] > 0))
    q_terr = np.where(territory >= 0, territory, rng.integers(0, 3, n))

    # dipoles (n, 3), mV
    t_axis = axis + rng.normal(-5, 12, n)
    d = {
        "p_vec": _frontal(rng.normal(55, 15, n), 0.15, p_amp),
        "q_vec": _unit(np.tile([-0.55, 0.05, 0.83], (n, 1))) * (0.18 * volt)[:, None],
        "r_vec": _frontal(axis, -0.35, 1.25 * volt),
        "s_vec": _unit(np.array([-0.25, -0.45, -0.85])) * (0.45 * volt)[:, None],
        "rp_vec": np.zeros((n, 3)),
        "t_vec": _frontal(t_axis, 0.35, t_amp),
    }
    # bundle branch blocks reshape the QRS and make T discordant
    rb_vec = _unit(np.array([-0.65, 0.05, 0.75]))
    d["rp_vec"] = np.where(rbbb[:, None], rb_vec * (0.7 * volt)[:, None], d["rp_vec"])
    lb_r = _frontal(axis, -0.6, 1.3 * volt)
    lb_rp = _frontal(axis - 25, -1.2, 1.1 * volt)  # the notch: late forces turn posterior
    d["rp_vec"] = np.where(lbbb[:, None], lb_rp, d["rp_vec"])
    d["r_vec"] = np.where(lbbb[:, None], lb_r, d["r_vec"])
    d["q_vec"] = np.where(lbbb[:, None], 0.0, d["q_vec"])
    d["s_vec"] = np.where(lbbb[:, None], d["s_vec"] * 0.3, d["s_vec"])
    discordant = -_unit(d["r_vec"]) * t_amp[:, None]
    d["t_vec"] = np.where(lbbb[:, None], discordant, d["t_vec"])
    # LVH strain: lateral ST depression and T flattening/inversion
    strain = lvh & (rng.random(n) < 0.6)
    d["t_vec"] = np.where(strain[:, None], 0.3 * discordant, d["t_vec"])
    st_vec = _unit(d["t_vec"] + 1e-9) * st_mag[:, None]
    st_vec += np.where(strain[:, None], -0.08 * _unit(d["r_vec"]), 0.0)
    st_vec += terr_vec * st_elev[:, None]
    # injury T inversion in the territory (older injury), pathologic Q pointing away from it
    t_inv = old_injury[:, None] * (-0.5 * terr_vec * t_amp[:, None])
    d["t_vec"] = d["t_vec"] + t_inv
    q_path = -_unit(_TERRITORY_VEC)[q_terr] * (0.35 * volt)[:, None]
    d["q_vec"] = np.where(pathologic_q[:, None] & ~lbbb[:, None], q_path, d["q_vec"])
    d["st_vec"] = st_vec
    d["u_vec"] = _unit(d["t_vec"] + np.array([0.0, 0.0, 0.6])) * u_amp[:, None]
    d["j_vec"] = _unit(d["r_vec"]) * (hypo_t * 0.3)[:, None]

    # ventricular premature beats: wide QRS of random direction, discordant T, no P
    ectopy = 0.02 + 0.06 * e["hf"] + 0.04 * e["cad"]
    ectopy = ectopy + r["electrolyte_ectopy"] * (0.15 * (k < 3.3) + 0.1 * (mg < 1.6))
    pvc = rng.random(n) < ectopy
    pvc_dir = _unit(rng.normal(0, 1, (n, 3)))
    d["pvc_vec"] = pvc_dir * (1.5 * volt)[:, None]
    d["pvc_t_vec"] = -pvc_dir * rng.uniform(0.3, 0.6, n)[:, None]

    # wave timing (ms after QRS onset) and widths
    D = qrs
    q_w = np.where(pathologic_q, np.maximum(0.3 * D, 42) / 4, 0.07 * D)  # >= 40 ms Q when pathologic
    timing = {
        "q_c": 2 * q_w, "q_s": q_w,
        "r_c": np.where(rbbb, 0.33 * D, np.where(lbbb, 0.36 * D, 0.45 * D)),
        "r_s": np.where(rbbb, 0.08 * D, np.where(lbbb, 0.155 * D, 0.11 * D)),
        "s_c": np.where(rbbb, 0.55 * D, 0.76 * D), "s_s": np.where(rbbb, 0.08 * D, 0.12 * D),
        "rp_c": np.where(rbbb, 0.8 * D, 0.69 * D), "rp_s": np.where(rbbb, 0.1 * D, 0.155 * D),
    }
    t_sd = 0.11 * qt * t_sig_scale
    t_su = t_sd * np.where(t_sig_scale < 1, 1.1 + 0.5 * (t_sig_scale - 0.55) / 0.45, 1.6)
    timing.update(
        t_peak=qt - 2 * t_sd, t_sd=t_sd, t_su=t_su,
        u_c=qt - 2 * t_sd + 130, u_s=np.full(n, 35.0),
        j_c=D + 8, j_s=np.full(n, 12.0),
        p_c=-pr + p_dur / 2, p_s=p_dur / 4,
    )
    return {
        "hr": hr, "rr": rr, "af": af, "pr": pr, "p_dur": p_dur, "qrs": qrs, "qt": qt, "qtc": qtc,
        "lbbb": lbbb, "rbbb": rbbb, "avb1": avb1 & ~af, "lvh": lvh, "strain": strain,
        "injury": injury, "territory": territory, "st_elev": st_elev, "pathologic_q": pathologic_q,
        "pvc_rate": np.where(pvc, rng.uniform(0.06, 0.25, n), 0.0), "pvc_qrs": rng.uniform(130, 170, n),
        "t_amp": t_amp, "u_amp": u_amp, "st_mag": st_mag, "volt": volt, "hypothermia_ecg": hypo_t > 0,
        **d, **timing,
    }


def frontal_axis(vec: np.ndarray) -> np.ndarray:
    """Frontal-plane axis in degrees (0 = lead I, +90 = aVF), the convention of machine reports."""
    return np.rad2deg(np.arctan2(vec[..., 1], vec[..., 0]))


def qrs_net_vector(p) -> np.ndarray:
    """Area-weighted sum of the QRS dipoles (Q, R, S, R'), whose frontal angle is the QRS axis."""
    return sum(p[f"{w}_vec"] * p[f"{w}_s"][:, None] for w in ("q", "r", "s", "rp"))


