"""jhnas.train: augmentation, determinism, learning, and the training signal on the CLI."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhnas import data, train
from jhnas import nn as jnn
from jhnas.cli import main
from jhnas.experiments import problems


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=False)(jnn.Conv(3, 4, 3, padding=1)(x))
        return jnn.Dense(4, 10)(jax.nn.relu(x).mean((1, 2)))


def _data(n=96, size=8):
    x, y = data.default_images()
    return data.normalize(x[:n, ::32 // size, ::32 // size]), y[:n]


def test_augment_crops_and_flips():
    x = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1
    out = train.augment(jax.random.key(0), x, pad=2)
    assert out.shape == x.shape
    for img, o in zip(x, out):  # each output is a shifted window of the zero-padded image
        padded = np.pad(np.asarray(img), ((2, 2), (2, 2), (0, 0)))
        windows = [padded[i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(np.array_equal(o, w) or np.array_equal(o, w[:, ::-1]) for w in windows)
    flips = [np.array_equal(train.augment(jax.random.key(k), x, pad=0)[0], x[0, :, ::-1])
             for k in range(20)]
    assert 0 < sum(flips) < 20  # pad 0: only the flip remains, with probability 1/2


def test_training_is_deterministic_and_learns():
    (x, y), cfg = _data(), train.TrainConfig(epochs=4, batch_size=32, learning_rate=0.1,
                                             augment=False)
    s1, h1 = train.train(jax.random.key(0), Tiny(), (x, y), (x, y), cfg, progress=False)
    s2, h2 = train.train(jax.random.key(0), Tiny(), (x, y), (x, y), cfg, progress=False)
    assert h1[:4] == h2[:4]
    jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)
    assert h1.train_loss[-1] < h1.train_loss[0]
    _, h3 = train.train(jax.random.key(1), Tiny(), (x, y), (x, y), cfg, progress=False)
    assert h3.train_loss != h1.train_loss
    # BatchNorm running statistics were updated and are used at evaluation
    assert not np.allclose(jax.tree.leaves(s1.batch_stats)[0], 0.0)


def test_bad_settings_are_refused():
    x, y = _data(16)
    with pytest.raises(ValueError, match="batch_size"):
        train.train(jax.random.key(0), Tiny(), (x, y), None, train.TrainConfig(batch_size=64))
    with pytest.raises(ValueError, match="label_smoothing"):
        train.train(jax.random.key(0), Tiny(), (x, y), None,
                    train.TrainConfig(batch_size=8, label_smoothing=1.5))


def test_signal_data_splits_the_embedded_images():
    (xt, yt), (xv, yv) = problems.signal_data(problems.PRESETS["cpu"])
    assert len(yt) == 762 and len(yv) == 255 and xt.shape[1:] == (32, 32, 3)


def test_cli_signal_errors(tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert main(["search", "--space", "darts", "--out", out]) == 2
    assert "--signal train" in capsys.readouterr().err
    assert main(["search", "--signal", "train", "--data-dir", str(tmp_path / "nope"),
                 "--out", out]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["search", "--signal", "train", "--data-dir", str(tmp_path), "--out", out]) == 2
    assert "no cifar10 train batch" in capsys.readouterr().err
