"""The variational autoencoder: its loss, its score, its checkpoints and its place in the series."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from anomalymap_helpers.errors import CheckpointError, ParameterError
from anomalymap_helpers.files import storage
from anomalymap_helpers.files.paths import RunFiles
from anomalymap_helpers.pipeline import scoring
from anomalymap_helpers.pipeline import training as train
from anomalymap_helpers.pipeline.models import VAE_ARCHITECTURE, ConvAutoencoder, ConvVAE, ModelConfig, build_model
from anomalymap_helpers.pipeline.training import checkpoint
from anomalymap_helpers.pipeline.training.device import Precision, inference_precision

from .conftest import run_series

# Marked `precision`: run again with the other CPU precision in `make test` (fp32 on a bf16 CPU,
# emulated bf16 elsewhere); the slow end-to-end ones run once.
PRECISION = pytest.mark.precision

CPU = dict(device="cpu", batch_size=64)
FP32 = Precision("fp32", "cpu")


def _vae(seed: int = 0, latent_dim: int = 8) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(ModelConfig(latent_dim=latent_dim))


def _reference_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over dimensions, by torch.distributions."""
    q = Normal(mu.double(), (0.5 * logvar.double()).exp())
    return kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))).sum(1)


@PRECISION
def test_vae_mean_is_its_latent_and_noise_samples_around_it() -> None:
    model = _vae().eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        mu, logvar = model.encode_stats(x)
        torch.testing.assert_close(model.encode(x), mu)
        torch.testing.assert_close(model(x), model.decode(mu))  # no noise: the mean's reconstruction
        noise = torch.randn(5, 8)
        drawn = model.sample(x, noise)
        torch.testing.assert_close(drawn.reconstruction, model.decode(mu + (0.5 * logvar).exp() * noise))
        torch.testing.assert_close((drawn.latents, drawn.logvar), (mu, logvar))
        seen = model.infer(x)  # every model's one call: the mean's reconstruction, mu and logvar, the KL term
        torch.testing.assert_close((seen.reconstruction, seen.latents, seen.logvar), (model(x), mu, logvar))
        torch.testing.assert_close(seen.kl.double(), _reference_kl(mu, logvar), rtol=1e-5, atol=1e-6)  # fp32 sums
    assert model.config.architecture == VAE_ARCHITECTURE and model.config.model == "vae"
    assert type(build_model(ModelConfig(architecture=VAE_ARCHITECTURE))) is ConvVAE
    assert type(build_model(ModelConfig())) is ConvAutoencoder


@PRECISION
def test_kl_term_matches_torch_distributions() -> None:
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    from anomalymap_helpers.pipeline.models import kl_divergence as ours

    torch.testing.assert_close(ours(mu, logvar).double(), _reference_kl(mu, logvar), rtol=1e-5, atol=1e-6)
    assert torch.all(ours(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


@PRECISION
def test_training_step_loss_is_the_beta_weighted_negative_elbo_per_pixel() -> None:
    model = _vae()
    x, noise = torch.rand(6, 1, 28, 28), torch.randn(6, 8)
    with torch.no_grad():
        out = model.sample(x, noise)
        out, mu, logvar = out.reconstruction, out.latents, out.logvar
        sse = ((out.double() - x.double()) ** 2).flatten(1).sum(1)
        for beta in (1.0, 0.25):
            expected = ((sse + beta * _reference_kl(mu, logvar)) / x[0].numel()).mean().item()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            with torch.enable_grad():
                value = train.training_step(train.objective_for("vae", model, FP32, beta), optimizer, scaler,
                                             {"images": x, "noise": noise})
            assert value == pytest.approx(expected, rel=1e-5)


def test_beta_trades_kl_for_reconstruction(small_normals) -> None:
    x, v = small_normals
    kls, errors = {}, {}
    for beta in (0.05, 5.0):
        result = train.train(x, v, train.TrainConfig(epochs=2, model="vae", beta=beta, **CPU), progress=False)
        scored = scoring.score(result.model, v)
        kls[beta], errors[beta] = float(scored.kl.mean()), float(scored.scores.mean())
    assert kls[5.0] < 0.5 * kls[0.05]
    assert errors[0.05] < errors[5.0]


@PRECISION
def test_vae_resume_equals_an_uninterrupted_run(small_normals, tmp_path: Path) -> None:
    """The VAE's draws come from a stream seeded per epoch, so resuming repeats them exactly."""
    x, v = small_normals
    x, v = x[:256], v[:64]  # 4 steps an epoch: the claim needs no more, and bf16 emulated is slow
    cfg = dict(model="vae", beta=0.5, **CPU)
    whole = train.train(x, v, train.TrainConfig(epochs=2, **cfg), progress=False)
    part = RunFiles.at(tmp_path)
    train.train(x, v, train.TrainConfig(epochs=1, **cfg), files=part, progress=False)
    resumed = train.train(x, v, train.TrainConfig(epochs=2, **cfg), files=part, resume=True, progress=False)
    for name, w in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], w, rtol=0, atol=0, msg=name)
    other_seed = train.train(x, v, train.TrainConfig(epochs=1, seed=1, **cfg), progress=False)
    assert not torch.equal(other_seed.model.encoder_logvar.weight, whole.model.encoder_logvar.weight)


def test_vae_checkpoint_round_trip_and_refusals(small_normals, tmp_path: Path) -> None:
    model = _vae(latent_dim=16).eval()
    vae_path = checkpoint.save_model(tmp_path / "vae.safetensors", model)
    loaded = checkpoint.load_model(vae_path, model="vae")
    x = torch.rand(4, 1, 28, 28)
    assert type(loaded) is ConvVAE
    with torch.no_grad():
        assert torch.equal(loaded.encode_stats(x)[1], model.encode_stats(x)[1])
    with pytest.raises(CheckpointError, match=r"holds a variational autoencoder \(model='vae'\).*asks for an autoencoder \(model='ae'\): give model='vae'"):
        checkpoint.load_model(vae_path, model="ae")
    with pytest.raises(CheckpointError, match=r"model='vae'.*model='ae'"):
        checkpoint.load_model(vae_path, expected=ModelConfig(latent_dim=16))
    ae_path = checkpoint.save_model(tmp_path / "ae.safetensors", ConvAutoencoder(ModelConfig(latent_dim=16)))
    with pytest.raises(CheckpointError, match=r"holds an autoencoder \(model='ae'\).*asks for a variational autoencoder \(model='vae'\): give model='ae'"):
        checkpoint.load_model(ae_path, model="vae")
    assert type(checkpoint.load_model(ae_path, model="ae")) is ConvAutoencoder

    # Resuming a VAE's training state as an autoencoder is refused before any work, naming the setting.
    xs, v = small_normals
    files = RunFiles.at(tmp_path / "run")
    train.train(xs[:256], v[:64], train.TrainConfig(epochs=1, model="vae", **CPU), files=files, progress=False)
    before = files.model.read_bytes()
    with pytest.raises(ParameterError, match=r"model: checkpoint 'vae', now 'ae'"):
        train.train(xs[:256], v[:64], train.TrainConfig(epochs=2, **CPU), files=files, resume=True, progress=False)
    with pytest.raises(ParameterError, match=r"beta: checkpoint 1.0, now 2.0"):
        train.train(xs[:256], v[:64], train.TrainConfig(epochs=2, model="vae", beta=2.0, **CPU), files=files,
                    resume=True, progress=False)
    assert files.model.read_bytes() == before


@PRECISION
def test_elbo_score_against_a_brute_force_reference() -> None:
    model = _vae(seed=3).eval()
    images = torch.rand(9, 1, 28, 28)
    scored = scoring.score(model, images, precision=FP32)
    scorer = scoring.Scorer(model, torch.rand(20, 1, 28, 28), torch.rand(6, 1, 28, 28))
    elbo = scorer.all_scores(scored)["elbo"]
    for i in range(len(images)):  # one image at a time, from the layers' outputs
        with torch.no_grad():
            mu, logvar = model.encode_stats(images[i : i + 1])
            recon = model.decode(mu)
        sse = ((images[i].double() - recon[0].double()) ** 2).sum()
        expected = (sse + _reference_kl(mu, logvar)[0]) / images[i].numel()
        assert float(elbo[i]) == pytest.approx(float(expected), rel=1e-5)
    assert "elbo" in scorer.val_scores and list(scorer.all_scores(scored)) != list(scoring.METHODS)
    ae = ConvAutoencoder(ModelConfig(latent_dim=8)).eval()
    assert "elbo" not in scoring.Scorer(ae, torch.rand(20, 1, 28, 28), torch.rand(6, 1, 28, 28)).val_scores


def test_elbo_is_refused_for_an_autoencoder_with_what_to_do() -> None:
    assert scoring.check_method("elbo", "mnist", "vae") == "elbo"
    with pytest.raises(ParameterError, match=r"score_method='elbo' .*-p model vae"):
        scoring.check_method("elbo", "mnist", "ae")
    with pytest.raises(ParameterError, match=r"model='gan': use one of 'ae' \(autoencoder\), 'vae' \(variational autoencoder\), 'restore'"):
        train.TrainConfig(model="gan")
    with pytest.raises(ParameterError, match=r"beta=0.0: use a number above 0"):
        train.TrainConfig(model="vae", beta=0.0)


def test_the_series_with_a_vae(tmp_path: Path, small_series, run_dir: Path) -> None:
    """``-p model vae -p score_method elbo`` through the five notebooks: a VAE checkpoint, its own score,
    and 03's table beside the autoencoder's smoke run (same parameters of 01, so the same split)."""
    params = {**small_series, "model": "vae", "beta": 0.5, "score_method": "elbo", "compare_run": run_dir}
    out = run_series(tmp_path / "vae", params)
    files = RunFiles.at(out)
    assert type(checkpoint.load_model(files.model)) is ConvVAE
    saved = storage.read_json(files.model_config)
    assert saved["train"]["model"] == "vae" and saved["train"]["beta"] == 0.5
    metrics = storage.read_json(files.metrics)
    assert metrics["score"] == "elbo"
    # The scores 03 wrote are the negative ELBO of each test image, recomputed here from the layers.
    from anomalymap_helpers.runs.opened import Run

    run = Run.open(out, data_dir=small_series["data_dir"], mnist_dir=small_series["mnist_dir"], device="cpu")
    indices, written = scoring.read_scores(files.scores, "test")
    images = run.splits["test"].images[:5]
    with torch.no_grad():
        mu, logvar = run.model.encode_stats(images)
        sse = ((run.model.decode(mu).double() - images.double()) ** 2).flatten(1).sum(1)
    expected = (sse + _reference_kl(mu, logvar)) / images[0].numel()
    # 03 scores in bf16 on CPUs that have it natively. Precision fp32: the sums of 784 squared errors
    # in another order, 1e-4 relative. bf16 (u = 2**-8): each pixel's reconstruction is a sigmoid
    # rounded to u, so a squared error moves by at most 2u of its own size plus the latents' few u:
    # 3e-2 (8u) relative holds the score, which is a sum of such errors.
    rtol = 1e-4 if inference_precision(torch.device("cpu")).name == "fp32" else 3e-2
    torch.testing.assert_close(written[:5], expected, rtol=rtol, atol=1e-7)
    import csv

    with open(files.comparison, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["method"] == "elbo" and {r["method"] for r in rows} == {*scoring.METHODS, "elbo"}
    from anomalymap_helpers.commands import export

    with pytest.raises(ParameterError, match=r"this run's score is 'elbo'.*rerun 03_evaluation with another score_method"):
        export.detector_for(run)

    # 03's side-by-side table: this run's (vae) and the smoke run's (ae) scores, from each run's own table.
    import pandas as pd

    side = run.beside(run_dir)
    mine, theirs = pd.read_csv(files.comparison), pd.read_csv(run_dir / "score_comparison.csv")
    row = side.set_index("method").loc["latent-knn"]
    assert row["this run (vae) roc_auc"] == mine.set_index("method").loc["latent-knn", "roc_auc"]
    assert row[f"{run_dir} (ae) roc_auc"] == theirs.set_index("method").loc["latent-knn", "roc_auc"]
    assert pd.isna(side.set_index("method").loc["elbo", f"{run_dir} (ae) roc_auc"])  # the AE has no elbo
    executed = (out / "notebooks" / "03_evaluation.ipynb").read_text()
    assert "this run (vae) roc_auc" in executed

    other = tmp_path / "other-split"
    other.mkdir()
    (other / "score_comparison.csv").write_bytes((run_dir / "score_comparison.csv").read_bytes())
    (other / "splits.safetensors").write_bytes(b"another split")
    from anomalymap_helpers.errors import DataError

    with pytest.raises(DataError, match=r"was made on another split .*rerun it with this run's notebook-01 parameters"):
        run.check_beside(other)
    from anomalymap_helpers import parameters

    with pytest.raises(ParameterError, match=r"compare_run=.*no score_comparison.csv there"):
        parameters.validate({"compare_run": str(tmp_path / "nothing")}, ["compare_run"])
