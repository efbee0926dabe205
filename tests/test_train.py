"""The training loop: repeatable, learns Gaussian embeddings, checkpoints that fail loudly."""

from __future__ import annotations

import pytest
import torch

from jepabook.data import GaussianMixture
from jepabook.losses import VectorViews
from jepabook.models import MLP
from jepabook.train import (
    TrainConfig,
    cosine_schedule,
    gaussianity,
    load_checkpoint,
    save_checkpoint,
    train_jepa,
)


def setup(seed: int = 0):
    torch.manual_seed(seed)
    mixture = GaussianMixture.random(2, 3, seed=0)
    return MLP(2, 2, hidden=32, depth=2), MLP(2, 2, hidden=16, depth=1), mixture


def quick(**overrides) -> TrainConfig:
    values = dict(steps=60, batch_size=128, warmup=5, lam=0.5, n_slices=64, eval_every=20)
    values.update(overrides)
    return TrainConfig(progress=False, device="cpu", **values)


def test_same_seed_same_loss_curve():
    curves = []
    for _ in range(2):
        encoder, predictor, mixture = setup()
        history = train_jepa(
            encoder, predictor, VectorViews(0.05), mixture.sample(512, seed=1), quick()
        )
        curves.append(history.loss)
    assert curves[0] == curves[1]
    encoder, predictor, mixture = setup()
    other = train_jepa(
        encoder, predictor, VectorViews(0.05), mixture.sample(512, seed=1), quick(seed=1)
    )
    assert other.loss != curves[0]


def test_training_makes_held_out_embeddings_more_gaussian():
    encoder, predictor, mixture = setup()
    held_out = mixture.sample(1000, seed=2)
    before = gaussianity(encoder, held_out)
    history = train_jepa(
        encoder, predictor, VectorViews(0.05), mixture.sample(4000, seed=1), quick(steps=300),
        held_out=held_out,
    )  # fmt: skip
    after = history.held_out_sigreg[-1]
    assert after < before / 20
    assert len(history.loss) == 300 and history.eval_step[-1] == 299


def test_checkpoint_round_trip(tmp_path):
    encoder, predictor, mixture = setup()
    config = quick(steps=10)
    history = train_jepa(encoder, predictor, VectorViews(0.05), mixture.sample(256, seed=1), config)
    path = save_checkpoint(tmp_path / "run.pt", encoder, predictor, config=config, history=history)
    fresh_encoder, fresh_predictor, _ = setup(seed=5)
    loaded_config, loaded_history = load_checkpoint(path, fresh_encoder, fresh_predictor)
    x = torch.randn(7, 2)
    torch.testing.assert_close(fresh_encoder(x), encoder(x))
    assert loaded_config == config and loaded_history.loss == history.loss


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    encoder, predictor, _ = setup()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(corrupt, encoder)
    path = save_checkpoint(tmp_path / "ok.pt", encoder, predictor)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(truncated, encoder)
    with pytest.raises(ValueError, match="encoder: the weights .* do not fit"):
        load_checkpoint(path, MLP(2, 3, hidden=32, depth=2))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", encoder)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a jepabook checkpoint"):
        load_checkpoint(tmp_path / "other.pt", encoder)


def test_schedule_and_config_validation():
    assert cosine_schedule(0, 100, 10) == pytest.approx(0.1)
    assert cosine_schedule(10, 100, 10) == pytest.approx(1.0)
    assert cosine_schedule(100, 100, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="regulariser"):
        TrainConfig(regulariser="vicreg")
    with pytest.raises(ValueError, match="lam"):
        TrainConfig(lam=2.0)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
