import json

import numpy as np
import pytest
import torch

import ecgkt
from ecgkt.errors import ECGKTError
from ecgkt.predict.inference import Predictor, RecordResult
from ecgkt.models import (ECG_ENCODER_SIZES, ContrastiveModel, ECGEncoder, ECGKTModel, MultimodalModel,
                          TabularEncoder, TabularNormalizer)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_encoder_shapes_any_length(size):
    enc = ECGEncoder(size).eval()
    for T in (137, 1000):
        h = enc(torch.randn(3, 12, T))
        assert h.shape == (3, enc.out_dim) and torch.isfinite(h).all()


def test_encoder_sizes_grow():
    n = {s: sum(p.numel() for p in ECGEncoder(s).parameters()) for s in ECG_ENCODER_SIZES}
    assert n["tiny"] < n["small"] < n["base"]
    with pytest.raises(ValueError, match="unknown ECG encoder size"):
        ECGEncoder("huge")


def test_group_norm_is_batch_split_invariant():
    enc = ECGEncoder("tiny", norm="group").train()
    x = torch.randn(4, 12, 301)
    whole = enc(x)
    halves = torch.cat([enc(x[:2]), enc(x[2:])])
    torch.testing.assert_close(whole, halves, rtol=1e-5, atol=1e-5)


def test_tabular_normalizer_fits_observed_values_only():
    tab = torch.tensor([[1.0, float("nan")], [3.0, 10.0], [5.0, 20.0]])
    mask = torch.isfinite(tab)
    norm = TabularNormalizer(2).fit(tab, mask)
    torch.testing.assert_close(norm.mean, torch.tensor([3.0, 15.0]))
    torch.testing.assert_close(norm.std, torch.tensor([np.sqrt(8 / 3), 5.0], dtype=torch.float32))
    out = norm(tab, mask)
    assert out.shape == (3, 4)
    assert out[0, 1] == 0 and out[0, 3] == 1  # missing -> 0 with its indicator set
    assert out[1, 2] == 0 and out[1, 3] == 0
    # a value reported as observed but NaN is treated as missing, never propagated
    bad = norm(torch.tensor([[float("nan"), 1.0]]), torch.tensor([[True, True]]))
    assert torch.isfinite(bad).all() and bad[0, 2] == 1


def test_tabular_encoder_ignores_values_behind_mask():
    enc = TabularEncoder(3, hidden=16).eval()
    tab = torch.randn(2, 3)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    other = tab.clone()
    other[0, 1] = 1e6
    torch.testing.assert_close(enc(tab, mask)[0], enc(other, mask)[0])


def test_contrastive_and_multimodal_forward():
    cm = ContrastiveModel(ECGEncoder("tiny"), 5, 32, 16, 2, 0.0, 0.07)
    e, t = cm(torch.randn(4, 12, 200), torch.randn(4, 5), torch.ones(4, 5, dtype=torch.bool))
    assert e.shape == t.shape == (4, 32)
    # the projections are normalised once, by the loss: rescaling them changes nothing
    from ecgkt import losses

    scale = cm.logit_scale.exp()
    torch.testing.assert_close(losses.clip_loss(e, t, scale), losses.clip_loss(3 * e, 0.5 * t, scale))
    mm = MultimodalModel(ECGEncoder("tiny"), 5, 3, 16, 2, 0.0, 0.0, prior=torch.tensor([0.1, 0.5, 0.9]))
    assert mm(torch.randn(4, 12, 200), torch.randn(4, 5), torch.ones(4, 5, dtype=torch.bool)).shape == (4, 3)


def _model():
    torch.manual_seed(0)
    return ECGKTModel.build(size="tiny", dx_names=["afib", "lbbb", "stemi"],
                            lab_label_names=["potassium_low", "potassium_high"], lab_tests=["potassium"],
                            preprocessing=dict(highpass=0.5, lowpass=45.0, notch=60.0, target_fs=100,
                                               normalize="zscore"))


def test_save_and_load_roundtrip(tmp_path):
    model = _model().eval()
    x = torch.randn(2, 12, 1000) * 0.5
    before = model.predict_proba(x, 500)[:2]
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["dx_names"] == ["afib", "lbbb", "stemi"] and cfg["preprocessing"]["target_fs"] == 100
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded = ecgkt.ECGKTModel.from_pretrained(tmp_path / "m")
    after = loaded.predict_proba(x, 500)[:2]
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ECGKTError, match="config.json is missing"):
        ECGKTModel.from_pretrained(tmp_path)
    _model().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ECGKTError, match="malformed JSON"):
        ECGKTModel.from_pretrained(tmp_path)


def test_predict_maps_leads_by_name_and_int16_gain():
    model = _model().eval()
    torch.manual_seed(1)
    mv = torch.randn(12, 1000) * 0.3
    leads = list(model.leads)
    # MIMIC order: aVF before aVL, lower-case names
    order = [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]
    shuffled = [leads[i].lower() for i in order]
    p1 = model.predict(mv, 500, leads)
    p2 = model.predict(mv[order], 500, shuffled)
    assert isinstance(p1, RecordResult)  # the one result type, as Predictor and `ecgkt predict` give
    dx1, dx2 = dict(p1.diagnoses), dict(p2.diagnoses)
    for k in dx1:
        assert dx1[k] == pytest.approx(dx2[k], abs=1e-6)
    adc = torch.round(mv * 200).to(torch.int16)
    p3 = model.predict(adc, 500, leads, gain=torch.full((12,), 200.0), baseline=torch.zeros(12))
    labs3 = {f.output: f.probability for f in p3.labs}
    for f in p1.labs:
        assert f.probability == pytest.approx(labs3[f.output], abs=2e-3)
    assert set(dx1) == {"afib", "lbbb", "stemi"} and all(0 <= v <= 1 for v in dx1.values())
    assert p1.to_dict() == Predictor(model).predict(mv, 500, leads).to_dict()
    batch = model.predict(torch.stack([mv, mv]), 500, leads)
    assert len(batch) == 2 and batch[0].to_dict()["diagnoses"] == p1.to_dict()["diagnoses"]
    # per-record gains in a batch; the model's mode is left as it was
    model.train()
    both = model.predict(torch.stack([adc, adc]), 500, leads, gain=torch.full((2, 12), 200.0))
    assert model.training and both[1].to_dict()["labs"] == p3.to_dict()["labs"]


def test_predict_rejects_missing_leads():
    model = _model()
    with pytest.raises(ECGKTError, match="lacks lead"):
        model.predict(torch.randn(2, 500), 500, ["I", "II"])
    with pytest.raises(ECGKTError, match="lead names"):
        model.predict(torch.randn(12, 500), 500, ["I", "II"])
