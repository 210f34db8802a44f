"""train.py end to end on real FER-2013 images: a short run learns, resume is exact,
evaluation writes its report and plots, bad runs fail clearly."""
import json

import numpy as np
import pytest
from helpers import run_train

import tinycnn as tc
import train
import fer_models
from fer_models.predict import load_model, save_model
from fer_models.data import default_location

DATA = default_location()  # $FER2013_DIR, else ../shared/fer2013
pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"FER-2013 not found at {DATA}")


@pytest.fixture
def cache(fer_cache):
    return fer_cache


run = run_train


def test_short_training_run_learns(tmp_path, cache, capsys):
    out = tmp_path / "run"
    # batch 16: enough steps for BatchNorm's moving averages (momentum 0.99) to settle
    run(["--model", "mini", "--limit", "3000", "--epochs", "3", "--batch-size", "16", "--lr", "3e-3",
         "--out", out], cache)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"], history
    report = json.loads((out / "report.json").read_text())
    # above guessing the most frequent class (happy: 24.5% of PrivateTest), not just above 1/7
    assert report["PrivateTest"]["report"]["accuracy"] > 0.27, report["PrivateTest"]["report"]["accuracy"]
    for name in ("best.npz", "checkpoint.npz", "curves.png", "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "PrivateTest: accuracy" in printed and "confusion matrix" in printed
    train.main(["--model-card", str(out)])
    card = capsys.readouterr().out
    accuracy = report["PrivateTest"]["report"]["accuracy"]
    assert "Architecture `mini`" in card and f"| PrivateTest | {accuracy:.4f} |" in card
    assert "test-time augmentation" not in card
    # a mirror-TTA evaluation lands beside the plain report, and the card shows both
    run(["--evaluate", out, "--tta"], cache)
    tta = json.loads((out / "report-tta.json").read_text())
    assert tta["tta"] == "mirror" and (out / "confusion-tta.png").stat().st_size > 0
    assert json.loads((out / "report.json").read_text()) == report   # the plain report is kept
    capsys.readouterr()
    train.main(["--model-card", str(out)])
    card = capsys.readouterr().out
    tta_accuracy = tta["PrivateTest"]["report"]["accuracy"]
    assert "## With test-time augmentation" in card and f"| PrivateTest | {tta_accuracy:.4f} |" in card
    # and the six zoomed views, in a report and a section of their own
    run(["--evaluate", out, "--tta", "zooms"], cache)
    zooms = json.loads((out / "report-tta-zooms.json").read_text())
    assert zooms["tta"] == "zooms" and json.loads((out / "report-tta.json").read_text()) == tta
    capsys.readouterr()
    train.main(["--model-card", str(out)])
    card = capsys.readouterr().out
    zooms_accuracy = zooms["PrivateTest"]["report"]["accuracy"]
    assert "## With six-view test-time augmentation" in card and f"| PrivateTest | {zooms_accuracy:.4f} |" in card


def test_a_fine_tuned_run_records_the_architecture_it_trains(tmp_path, cache, capsys):
    """--init-from without --model trains the file's architecture: args.json and the model
    card name it, not --model's default (resfer)."""
    source = tmp_path / "mini.npz"
    save_model(fer_models.build("mini", seed=0), source)
    out = tmp_path / "tuned"
    run(["--init-from", source, "--limit", "200", "--epochs", "1", "--batch-size", "50", "--out", out], cache)
    assert json.loads((out / "args.json").read_text())["model"] == "mini"
    assert load_model(out).name == "mini"
    capsys.readouterr()
    train.main(["--model-card", str(out)])
    assert "Architecture `mini`" in capsys.readouterr().out


@pytest.mark.parametrize("ema", [[], ["--ema", "0.9"], ["--mixup", "0.4", "--cutmix", "1.0"]],
                         ids=["plain", "ema", "mixing"])
def test_resume_equals_uninterrupted_run(tmp_path, cache, monkeypatch, ema):
    """With --ema too: the moving average is in the checkpoint, and best.npz is it. With
    --mixup and --cutmix: the mixing's draws are the epoch's too."""
    common = ["--model", "mini", "--limit", "400", "--epochs", "2", "--batch-size", "50", "--seed", "3"] + ema
    run(common + ["--out", tmp_path / "straight"], cache)

    # the same run, interrupted by Ctrl-C in the middle of epoch 2 ...
    real_step, calls = tc.optim.Adam.step, {"n": 0}

    def step_then_interrupt(self):
        calls["n"] += 1
        if calls["n"] == 12:  # 8 steps per epoch: this is inside epoch 2
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(tc.optim.Adam, "step", step_then_interrupt)
    with pytest.raises(SystemExit) as stopped:
        run(common + ["--out", tmp_path / "cut"], cache)
    assert stopped.value.code == 130
    assert (tmp_path / "cut" / "interrupted.npz").exists()
    monkeypatch.setattr(tc.optim.Adam, "step", real_step)

    # ... and resumed from its last checkpoint (end of epoch 1)
    run(["--resume", tmp_path / "cut"], cache)
    a = load_model(tmp_path / "straight" / "best.npz").get_weights()
    b = load_model(tmp_path / "cut" / "best.npz").get_weights()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7, err_msg=key)
    h_a = json.loads((tmp_path / "straight" / "history.json").read_text())
    h_b = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [h["val_acc"] for h in h_a] == [h["val_acc"] for h in h_b]
    with np.load(tmp_path / "straight" / "checkpoint.npz") as f:
        kept = {k: f[k] for k in f.files}
    assert any(k.startswith("opt/ema/") for k in kept) == ("--ema" in ema)
    if "--ema" in ema and h_a[-1]["val_acc"] > h_a[0]["val_acc"]:   # best.npz is epoch 2's: the average, not the last weights
        best = load_model(tmp_path / "straight" / "best.npz").parameters()
        for i, p in enumerate(best):
            np.testing.assert_array_equal(p.data, kept[f"opt/ema/{i}"], err_msg=f"parameter {i}")
        assert not all(np.array_equal(a[k], kept[f"model/{k}"]) for k in a), "best.npz is the last weights"

    # a finished run can be extended; the new length sticks for later resumes
    run(["--resume", tmp_path / "cut", "--epochs", "3"], cache)
    assert json.loads((tmp_path / "cut" / "args.json").read_text())["epochs"] == 3
    assert [h["epoch"] for h in json.loads((tmp_path / "cut" / "history.json").read_text())] == [1, 2, 3]


def test_nan_loss_stops_clearly_and_keeps_the_last_checkpoint(tmp_path, cache, monkeypatch):
    real_loss, calls = tc.losses.softmax_cross_entropy, {"n": 0}

    def loss_turning_nan(logits, labels, **kw):
        calls["n"] += logits.requires_grad  # count training steps, not validation batches
        loss = real_loss(logits, labels, **kw)
        if calls["n"] == 12:  # inside epoch 2 (8 steps per epoch)
            loss.data = np.float32(np.nan) * loss.data
        return loss

    monkeypatch.setattr(tc.losses, "softmax_cross_entropy", loss_turning_nan)
    out = tmp_path / "nan"
    with pytest.raises(SystemExit, match=r"loss became nan at epoch 2, step 4.*epoch 1.*lower --lr"):
        run(["--model", "mini", "--limit", "400", "--epochs", "3", "--batch-size", "50", "--out", out], cache)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    with np.load(out / "checkpoint.npz") as f:
        assert json.loads(str(f["meta"]))["epoch"] == 1


def test_evaluate_weights_file(tmp_path, cache):
    from fer_models import build
    from fer_models.predict import save_model
    save_model(build("small3", seed=1), tmp_path / "w.npz")
    run(["--evaluate", tmp_path / "w.npz", "--out", tmp_path / "eval"], cache)
    result = json.loads((tmp_path / "eval" / "report.json").read_text())
    cm = np.array(result["PrivateTest"]["confusion_matrix"])
    assert cm.sum() == 3589 and cm.shape == (7, 7)
    # accuracy in the report is the trace of the confusion matrix over its total
    assert result["PrivateTest"]["report"]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert (tmp_path / "eval" / "confusion.png").exists()


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path, cache):
    with pytest.raises(SystemExit, match="no checkpoint"):
        run(["--resume", tmp_path / "nothing"], cache)


def test_list_models_shows_every_architecture(capsys):
    train.main(["--list-models"])
    out = capsys.readouterr().out
    for name in ("updown", "vggbn", "deep4", "small3", "gap4", "resfer", "mini"):
        assert name in out
