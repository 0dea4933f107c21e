"""The networks against Tables 2 and 3, layout equivalence, and safe save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sb2dask.models.densenet import TABLE_BLOCKS, DenseTrunk, ParameterNet, TemperatureNet
from sb2dask.models.detector import BinaryDetector
from sb2dask.models.io import LabelScaling, ModelFileError, ModelManifest, load_model, save_model
from sb2dask.models.layers import canonical_state_dict, load_canonical_state_dict
from sb2dask.models.predict import sort_pairs

WAVE = tuple(np.linspace(8470.0, 8710.0, 903))


def _shapes(trunk: DenseTrunk, n_pix: int = 903) -> list[tuple[str, tuple]]:
    y = trunk.ops.prepare(torch.zeros(2, n_pix))
    out = []
    for mod in trunk.features:
        y = mod(y)
        out.append((type(mod).__name__, tuple(y.shape[1:])))
    return out


def test_temperature_trunk_follows_table_2():
    shapes = _shapes(TemperatureNet("1d").eval().trunk)
    names = [n for n, _ in shapes]
    assert names.count("_DenseLayer") == 2 + 4 + 6 + 4
    assert names.count("_Transition") == 3
    # channels at the end of each dense block and transition: Table 2 steps 4-9
    block_ends, transitions = [], []
    for (n, s), nxt in zip(shapes, shapes[1:] + [("", ())]):
        if n == "_DenseLayer" and nxt[0] != "_DenseLayer":
            block_ends.append(s)
        if n == "_Transition":
            transitions.append(s)
    assert [s[0] for s in block_ends] == [b[2] for b in TABLE_BLOCKS] == [128, 256, 512, 512]
    assert [s[0] for s in transitions] == [64, 128, 256]
    # stem: 32 channels; lengths with the stated kernel 7 / stride 2 / padding 3 (see docstring)
    assert shapes[0][1] == (32, 452) and shapes[3][1] == (32, 226)
    assert block_ends[-1] == (512, 28)  # Table 2 step 9 output
    assert shapes[-1][1] == (512,)  # adaptive pooling + flatten


def test_heads_follow_tables_2_and_3():
    t = TemperatureNet()
    assert [(m.in_features, m.out_features) for m in t.head if isinstance(m, torch.nn.Linear)] \
        == [(512, 512), (512, 2)]
    p = ParameterNet()
    assert (p.temperature_branch[0].in_features, p.temperature_branch[0].out_features) == (2, 64)
    assert (p.merge[0].in_features, p.merge[0].out_features) == (512 + 64, 512)
    assert [(m.in_features, m.out_features) for m in p.head if isinstance(m, torch.nn.Linear)] \
        == [(512, 512), (512, 2)]
    x = torch.randn(3, 903)
    assert t.eval()(x).shape == (3, 2)
    assert p.eval()(x, torch.rand(3, 2)).shape == (3, 2)


def test_flops_match_the_paper_network():
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        TemperatureNet().eval()(torch.randn(1, 903))
    assert 95e6 < fc.get_total_flops() < 115e6  # ~104 MFLOP per spectrum


@pytest.mark.parametrize("cls", [TemperatureNet, ParameterNet, BinaryDetector])
def test_conv2d_layout_computes_the_same_function(cls):
    torch.manual_seed(1)
    a = cls("1d")
    b = cls("2d")
    load_canonical_state_dict(b, canonical_state_dict(a))
    x = torch.randn(4, 903)
    args = (x, torch.rand(4, 2)) if cls is ParameterNet else (x,)
    a.eval(), b.eval()
    torch.testing.assert_close(a(*args), b(*args), rtol=1e-5, atol=1e-5)
    # and in training mode (batch statistics) too
    a.train(), b.train()
    torch.manual_seed(3)
    ya = a(*args)
    torch.manual_seed(3)  # same dropout mask
    torch.testing.assert_close(ya, b(*args), rtol=1e-4, atol=1e-4)


def test_detector_outputs_a_probability_logit():
    torch.manual_seed(4)
    d = BinaryDetector().eval()
    x = torch.randn(5, 903)
    logit = d(x)
    assert logit.shape == (5,) and torch.isfinite(logit).all()
    assert logit.unique().numel() == 5  # one value per spectrum, from that spectrum
    torch.testing.assert_close(d(x[2:3]), logit[2:3], rtol=1e-5, atol=1e-5)  # not the batch
    # a raw logit (BCEWithLogitsLoss in training, sigmoid in inference), not a probability:
    # the last layer's bias moves it one for one, beyond [0, 1]
    with torch.no_grad():
        d.head[-1].bias += 10.0
    torch.testing.assert_close(d(x), logit + 10.0, rtol=1e-5, atol=1e-4)
    assert (d(x) > 1.0).all()


def _manifest(name="teff-0", target="teff", arch="TemperatureNet"):
    return ModelManifest(name=name, target=target, architecture=arch, wave=WAVE,
                         scaling=LabelScaling(3500.0, 6500.0, "K"))


def test_save_load_round_trips_exactly_in_both_layouts(tmp_path):
    torch.manual_seed(2)
    model = TemperatureNet("2d").eval()
    path = save_model(tmp_path, model, _manifest())
    x = torch.randn(3, 903)
    for layout in ("1d", "2d"):
        loaded, man = load_model(path, layout=layout)
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    assert man.scaling == LabelScaling(3500.0, 6500.0, "K")
    assert man.versions["torch"] and len(man.weights_sha256) == 64


def test_tampered_or_mismatched_models_are_refused(tmp_path):
    path = save_model(tmp_path, TemperatureNet(), _manifest())
    weights = tmp_path / "teff-0.safetensors"
    # checksum mismatch
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match"):
        load_model(path)
    # architecture mismatch: detector weights under a temperature-model manifest
    path2 = save_model(tmp_path, BinaryDetector(), _manifest("det-0", "p_binary", "BinaryDetector"))
    m = json.loads(path2.read_text())
    m["architecture"] = "TemperatureNet"
    path2.write_text(json.dumps(m))
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(path2)
    # a pickle in place of safetensors is never unpickled
    evil = tmp_path / "evil-0.safetensors"
    torch.save({"a": torch.zeros(1)}, evil)
    man = _manifest("evil-0").to_dict()
    from sb2dask.fileio import file_sha256

    man["weights_sha256"] = file_sha256(evil)
    (tmp_path / "evil-0.json").write_text(json.dumps(man))
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "evil-0.json")


def test_sort_pairs_keeps_parameters_with_their_temperature():
    t = np.array([[6000.0, 5000.0], [4000.0, 4500.0]])
    g = np.array([[4.0, 4.5], [4.8, 4.2]])
    ts, gs = sort_pairs(t, g)
    assert ts.tolist() == [[5000.0, 6000.0], [4000.0, 4500.0]]
    assert gs.tolist() == [[4.5, 4.0], [4.8, 4.2]]
