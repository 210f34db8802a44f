"""tinycnn.averaging (the mean of networks' weights, BatchNorm statistics measured afresh)
and train.py --soup, on a small FER-2013-shaped CSV written here (no data set needed)."""
import csv

import numpy as np
import pytest

import fer_models
import tinycnn as tc
from fer_models.ensemble import Ensemble, save_ensemble
from fer_models.predict import load_model, save_model
from tinycnn.averaging import average_weights, update_batchnorm


def conv_bn(seed):
    model = tc.Sequential([tc.layers.Conv2D(3, 3, padding="same"), tc.layers.BatchNormalization(),
                           tc.layers.GlobalAveragePooling2D(), tc.layers.Dense(2)], seed=seed)
    model.build((6, 6, 2))
    return model


def test_average_weights_is_the_mean_of_each_weight_moving_statistics_included():
    a, b, c = conv_bn(0), conv_bn(1), conv_bn(2)
    rng = np.random.default_rng(0)
    for m in (a, b, c):   # moving statistics away from their initial zeros and ones
        m.layers[1].moving_mean.data = rng.random(3).astype(np.float32)
        m.layers[1].moving_variance.data = 1 + rng.random(3).astype(np.float32)
    got = average_weights([a, b, c])
    ws = [m.get_weights() for m in (a, b, c)]
    assert got.keys() == ws[0].keys() and len(got) == 8
    for k in got:
        assert got[k].dtype == np.float32
        np.testing.assert_allclose(got[k], (ws[0][k] + ws[1][k] + ws[2][k]) / 3, rtol=1e-6, atol=1e-7, err_msg=k)
        assert not np.allclose(got[k], ws[0][k]) or np.allclose(ws[0][k], ws[1][k]), k
    np.testing.assert_array_equal(average_weights([a])["conv2d/kernel"], a.get_weights()["conv2d/kernel"])


def test_average_weights_refuses_networks_of_two_architectures():
    wider = tc.Sequential([tc.layers.Conv2D(4, 3, padding="same"), tc.layers.BatchNormalization(),
                           tc.layers.GlobalAveragePooling2D(), tc.layers.Dense(2)])
    wider.build((6, 6, 2))
    with pytest.raises(ValueError, match=r"weight 'conv2d/kernel' has shape \(3, 3, 2, 4\)"):
        average_weights([conv_bn(0), wider])
    no_bn = tc.Sequential([tc.layers.Conv2D(3, 3, padding="same"), tc.layers.GlobalAveragePooling2D(),
                           tc.layers.Dense(2)])
    no_bn.build((6, 6, 2))
    with pytest.raises(ValueError, match="not one architecture .*batch_normalization"):
        average_weights([conv_bn(0), no_bn])
    with pytest.raises(ValueError, match="at least one model"):
        average_weights([])


def test_update_batchnorm_leaves_the_mean_of_the_batch_statistics_and_restores_the_momentum():
    model = conv_bn(0)
    x = np.random.default_rng(1).normal(2.0, 3.0, (10, 6, 6, 2)).astype(np.float32)
    bn = model.layers[1]
    bn.moving_mean.data[:] = 50.0   # the old statistics must leave no trace
    before = {k: v.copy() for k, v in model.get_weights().items()}
    assert update_batchnorm(model, x, batch_size=4) == 1   # batches of 4, 4 and 2
    conv = model.layers[0](tc.Tensor(x)).data.reshape(10, 36, 3)
    batches = [conv[0:4], conv[4:8], conv[8:10]]
    mean = np.mean([b.reshape(-1, 3).mean(0) for b in batches], axis=0)
    var = np.mean([b.reshape(-1, 3).var(0) for b in batches], axis=0)   # biased, as in training
    np.testing.assert_allclose(bn.moving_mean.data, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.data, var, rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.99
    after = model.get_weights()
    for k in before:   # nothing else moves
        if "moving" not in k:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    # prepare maps each slice to the model's input
    update_batchnorm(model, x[:, :, :, :1], batch_size=10, prepare=lambda b: np.concatenate([b, b], axis=-1))
    doubled = model.layers[0](tc.Tensor(np.concatenate([x[..., :1]] * 2, axis=-1))).data.reshape(-1, 3)
    np.testing.assert_allclose(bn.moving_mean.data, doubled.mean(0), rtol=1e-5, atol=1e-5)


def test_update_batchnorm_refuses_no_examples_and_passes_over_networks_without_batchnorm():
    with pytest.raises(ValueError, match="needs examples .* shape \\(0, 6, 6, 2\\)"):
        update_batchnorm(conv_bn(0), np.zeros((0, 6, 6, 2), np.float32))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        update_batchnorm(conv_bn(0), np.zeros((2, 6, 6, 2), np.float32), batch_size=0)
    plain = tc.Sequential([tc.layers.GlobalAveragePooling2D(), tc.layers.Dense(2)])
    plain.build((6, 6, 2))
    assert update_batchnorm(plain, np.zeros((0, 6, 6, 2), np.float32)) == 0


# -- train.py --soup ---------------------------------------------------------------------------
def small_csv(path, per_class=6, seed=0, usages=("Training", "PublicTest")):
    """A FER-2013 CSV with per_class faces of each class in each of the usages (splits)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for usage in usages:
            for code in range(7):
                for _ in range(per_class):
                    writer.writerow([code, " ".join(map(str, rng.integers(0, 256, 48 * 48))), usage])
    return path


def soup_run(argv, data, cache):
    import train
    return train.main([*map(str, argv), "--data", str(data), "--cache-dir", str(cache)])


def ingredients(tmp_path, preprocessing=("none", "none")):
    """Two 'mini' weights files with different weights, as two fine-tunings would leave."""
    paths = []
    for seed, prep in enumerate(preprocessing):
        m = fer_models.build("mini", seed=seed)
        rng = np.random.default_rng(seed)
        for layer in m.all_layers():
            if isinstance(layer, tc.layers.BatchNormalization):
                layer.moving_mean.data = rng.normal(0, 0.1, layer.moving_mean.data.shape).astype(np.float32)
        m.preprocessing = prep
        paths.append(tmp_path / f"w{seed}.npz")
        save_model(m, paths[-1])
    return paths


def test_soup_from_the_command_line_averages_the_weights_and_measures_the_statistics(tmp_path, capsys):
    data, cache = small_csv(tmp_path / "fer2013.csv"), tmp_path / "cache"
    a, b = ingredients(tmp_path)
    soup_run(["--soup", a, b, "--out", tmp_path / "soup"], data, cache)   # .npz added
    printed = capsys.readouterr().out
    assert "measuring the soup's BatchNorm statistics on 42 Training images" in printed
    assert "PublicTest accuracy (42 images)" in printed and "soup of 2" in printed
    assert "python train.py --evaluate " + str(tmp_path / "soup.npz") in printed
    soup, wa, wb = (load_model(p).get_weights() for p in (tmp_path / "soup.npz", a, b))
    assert load_model(tmp_path / "soup.npz").name == "mini"
    moving = [k for k in soup if "moving" in k]
    assert moving
    for k in soup:
        if k not in moving:
            np.testing.assert_allclose(soup[k], (wa[k] + wb[k]) / 2, rtol=1e-6, atol=1e-7, err_msg=k)
        else:   # measured on Training, not the ingredients' own
            assert not np.allclose(soup[k], (wa[k] + wb[k]) / 2, atol=1e-3), k
    soup_run(["--soup", a, b, "--soup-stats", "average", "--out", tmp_path / "avg.npz"], data, cache)
    assert "measuring" not in capsys.readouterr().out
    avg = load_model(tmp_path / "avg.npz").get_weights()
    for k in moving:
        np.testing.assert_allclose(avg[k], (wa[k] + wb[k]) / 2, rtol=1e-6, atol=1e-7, err_msg=k)


def test_soup_refuses_what_cannot_be_averaged(tmp_path):
    data, cache = small_csv(tmp_path / "fer2013.csv"), tmp_path / "cache"
    a, b = ingredients(tmp_path)
    with pytest.raises(SystemExit, match="averages two or more networks, got 1"):
        soup_run(["--soup", a], data, cache)
    with pytest.raises(SystemExit, match="--soup and --ensemble each make one file"):
        soup_run(["--soup", a, b, "--ensemble", a, b], data, cache)
    save_ensemble(Ensemble([load_model(a), load_model(b)]), tmp_path / "ens.npz")
    with pytest.raises(SystemExit, match="ens.npz is an ensemble of 2"):
        soup_run(["--soup", a, tmp_path / "ens.npz"], data, cache)
    other = tmp_path / "other.npz"
    save_model(fer_models.build("small3"), other)
    with pytest.raises(SystemExit, match="other.npz is .*'small3'.* only networks of one architecture"):
        soup_run(["--soup", a, other], data, cache)
    (tmp_path / "eq").mkdir()
    c, d = ingredients(tmp_path / "eq", ("none", "equalize"))
    with pytest.raises(SystemExit, match="'equalize'.* one input"):
        soup_run(["--soup", c, d], data, cache)
    with pytest.raises(SystemExit, match="nothing.npz"):
        soup_run(["--soup", a, tmp_path / "nothing.npz"], data, cache)
    no_training = small_csv(tmp_path / "public.csv", usages=("PublicTest",))
    with pytest.raises(SystemExit, match="no Training images .*use --soup-stats average"):
        soup_run(["--soup", a, b], no_training, cache)
    soup_run(["--soup", a, b, "--soup-stats", "average", "--out", tmp_path / "avg"], no_training, cache)
    assert (tmp_path / "avg.npz").exists()
    with pytest.raises(SystemExit, match="no PublicTest split to report the soup on"):
        soup_run(["--soup", a, b], small_csv(tmp_path / "training.csv", usages=("Training",)), cache)


def test_soup_with_limit_measures_the_statistics_on_that_many_training_faces(tmp_path, capsys):
    data, cache = small_csv(tmp_path / "fer2013.csv"), tmp_path / "cache"
    a, b = ingredients(tmp_path)
    soup_run(["--soup", a, b, "--limit", "14", "--out", tmp_path / "soup"], data, cache)
    assert "measuring the soup's BatchNorm statistics on 14 Training images" in capsys.readouterr().out


def test_greedy_soup_adds_the_ingredients_best_first_while_the_soup_does_not_fall(capsys):
    from fer_programs.train import greedy_soup
    table = {(1, 3): 0.69, (1, 2): 0.72, (1, 2, 0): 0.72}   # the soups' accuracies
    tried = []

    def soup_accuracy(kept):
        tried.append(tuple(kept))
        return table[tuple(kept)]

    kept, acc = greedy_soup([0.5, 0.7, 0.6, 0.7], soup_accuracy, ["a", "b", "c", "d"])
    assert tried == [(1, 3), (1, 2), (1, 2, 0)]   # b and d tie: the given order; then c, then a
    assert (kept, acc) == ([1, 2, 0], 0.72)       # a kept on a tie: at least as accurate
    printed = capsys.readouterr().out
    assert "start from b (0.7000)" in printed and "+ d: left out (below 0.7000)" in printed
    assert "0.7200  + c: kept" in printed and "0.7200  + a: kept" in printed
    assert greedy_soup([0.4, 0.6], lambda kept: 0.5, ["a", "b"]) == ([1], 0.6)   # none joins the best


def test_greedy_soup_from_the_command_line_keeps_what_helps_and_leaves_out_what_hurts(tmp_path, capsys):
    data, cache = small_csv(tmp_path / "fer2013.csv", usages=("Training",)), tmp_path / "cache"
    rng = np.random.default_rng(1)
    with open(data, "a", newline="") as f:   # PublicTest: 20 happy faces (3), 5 angry (0)
        csv.writer(f).writerows([code, " ".join(map(str, rng.integers(0, 256, 48 * 48))), "PublicTest"]
                                for code in [3] * 20 + [0] * 5)
    paths = []
    for seed, (code, logit) in enumerate([(3, 10.0), (0, 30.0), (3, 10.0)]):   # logits: the last bias alone
        m = fer_models.build("mini", seed=seed)
        last = [layer for layer in m.all_layers() if isinstance(layer, tc.layers.Dense)][-1]
        last.kernel.data[:] = 0
        last.bias.data[:] = 0
        last.bias.data[code] = logit
        paths.append(tmp_path / f"w{seed}.npz")
        save_model(m, paths[-1])
    soup_run(["--soup", *paths, "--soup-recipe", "greedy", "--out", tmp_path / "soup"], data, cache)
    printed = capsys.readouterr().out
    assert f"start from {paths[0]} (0.8000)" in printed            # the best first; ties: the given order
    assert f"0.8000  + {paths[2]}: kept" in printed                # the soup of the two: still happy
    assert f"0.2000  + {paths[1]}: left out (below 0.8000)" in printed   # (10 + 10 + 0) / 3 < 30 / 3
    assert "greedy soup of 2 mini networks" in printed
    soup, w0, w2 = (load_model(p).get_weights() for p in (tmp_path / "soup.npz", paths[0], paths[2]))
    for k in soup:
        if "moving" not in k:
            np.testing.assert_allclose(soup[k], (w0[k] + w2[k]) / 2, rtol=1e-6, atol=1e-7, err_msg=k)
    with pytest.raises(SystemExit):
        soup_run(["--soup", *paths, "--soup-recipe", "best"], data, cache)
