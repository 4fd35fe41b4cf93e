"""In-loop evaluators (`config.evals`, sarmae_jax/evaluate/in_loop.py): results in the run's metrics, each
evaluated step once across a SIGTERM during an evaluation, on a gs:// run directory, the same numbers as
sarmae-eval on the export, and bad labelled sets refused before the train step is compiled."""
import os
import signal

import numpy as np
import pytest

from data_pipelines import synthetic
from sarmae_jax.evaluate import config as eval_config
from sarmae_jax.evaluate import in_loop
from sarmae_jax.evaluate import pipeline as eval_pipeline
from sarmae_jax.runtime import paths, sharding
from sarmae_jax.training import loop, metrics_file
from tests.conftest import TINY_LABELLED, tiny_config


def _config(data_path, labelled):
    c = tiny_config()
    c.data.path = data_path
    c.train.num_steps, c.train.log_every, c.train.checkpoint_every, c.train.image_every = 4, 2, 2, 1000
    c.evals.knn = in_loop.evaluator_config("knn", every_steps=2)
    c.evals.probe = in_loop.evaluator_config("linear_probe", every_steps=0, at_end=True)
    c.evals.probe.linear_probe.epochs = 10
    c.evals.recon = in_loop.evaluator_config("reconstruction", every_steps=0, at_end=True)
    c.evals.recon.dataset.kind = "synthetic"  # generated scenes: the clean images are known
    c.evals.recon.dataset.synthetic = TINY_LABELLED
    c.evals.recon.reconstruction.num_images = 8
    for name in ("knn", "probe", "recon"):
        c.evals[name].dataset.path = labelled
    return c


def test_sigterm_during_evaluation_is_redone_after_resume_and_matches_sarmae_eval(gcs, gcs_dir, tiny_dataset,
                                                                                  tiny_labelled, tmp_path, monkeypatch):
    c = _config(tiny_dataset, tiny_labelled)
    evaluate = in_loop.Evaluators.evaluate
    calls = []

    def evaluate_then_sigterm(self, step, names, params):
        out = evaluate(self, step, names, params)
        calls.append((step, tuple(names)))
        if step == 2 and len(calls) == 1:  # the first evaluation: a notice arrives while it runs
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(in_loop.Evaluators, "evaluate", evaluate_then_sigterm)
    first = loop.train_and_evaluate(c, gcs_dir, evaluators=in_loop.build)
    assert first["preempted_at_step"] == 2.0
    records = metrics_file.read(paths.as_path(gcs_dir) / "metrics.jsonl")
    assert not [r for r in records if any(k.startswith("eval/") for k in r)], "an interrupted evaluation was logged"

    loop.train_and_evaluate(c, gcs_dir, evaluators=in_loop.build)
    assert calls == [(2, ("knn",)), (2, ("knn",)), (4, ("knn", "probe", "recon"))]  # step 2 redone first
    records = metrics_file.read(paths.as_path(gcs_dir) / "metrics.jsonl")
    eval_rows = [r for r in records if "eval/seconds" in r]
    assert [r["step"] for r in eval_rows] == [2, 4]  # each evaluated step once
    end = eval_rows[-1]
    for key in ("eval/knn/top1", "eval/probe/top1", "eval/recon/psnr_L1", "eval/recon/ssim_L4",
                "eval/recon/psnr_masked_L4", "eval/knn/seconds", "eval/share_of_run"):
        assert np.isfinite(end[key]), key
    assert "eval/recon/enl_L1" in end  # NaN here: 8 tiny scenes have no flat window
    assert 0 < end["eval/share_of_run"] < 1
    assert (paths.as_path(gcs_dir) / "eval" / "recon" / "step_0000004.png").exists()

    # sarmae-eval on the run's export: the same split, seeds and features give the same accuracies.
    e = eval_config.default_config()
    e.checkpoint = f"{gcs_dir}/export"
    e.dataset.kind, e.dataset.path = "records", tiny_labelled
    e.splits, e.split_seed, e.protocols = ("all",), 0, ("linear_probe", "knn")
    e.knn.seeds = (0,)
    e.linear_probe.epochs, e.linear_probe.seeds = 10, (0,)
    results = eval_pipeline.run(e, str(tmp_path / "eval"))
    standalone = {row["protocol"].split(" ")[0]: row["runs"][0]["test_last"] for row in results["classification"]}
    assert abs(standalone["knn"] - end["eval/knn/top1"]) <= 0.5, (standalone, end)
    assert abs(standalone["linear_probe"] - end["eval/probe/top1"]) <= 0.5, (standalone, end)


@pytest.mark.parametrize("case", ["missing", "empty", "class_without_test_images"])
def test_bad_labelled_set_fails_before_the_step_is_compiled(case, tiny_dataset, tmp_path, monkeypatch):
    c = tiny_config()
    c.data.path = tiny_dataset
    c.evals.fusar = in_loop.evaluator_config("knn", every_steps=2)
    c.evals.fusar.dataset.path = path = str(tmp_path / "labelled")
    if case == "empty":
        os.makedirs(path)
    elif case == "class_without_test_images":
        synthetic.ensure_synthetic_dataset(path, num_examples=16, num_test_examples=2, image_size=32,
                                           examples_per_shard=16)
    monkeypatch.setattr(loop.state_lib, "build", lambda *a, **k: pytest.fail("the train step was built"))
    with pytest.raises(ValueError) as info:
        loop.train_and_evaluate(c, str(tmp_path / "run"), evaluators=in_loop.build)
    message = str(info.value)
    assert "config.evals.fusar" in message and path in message, message
    expected = {"missing": "does not exist", "empty": "cannot read",
                "class_without_test_images": "has no images of classes"}[case]
    assert expected in message, message


def test_evals_without_the_evaluators_and_bad_keys_are_refused(tiny_dataset, tmp_path):
    c = tiny_config()
    c.data.path = tiny_dataset
    c.evals.knn = in_loop.evaluator_config("knn", every_steps=2)
    with pytest.raises(ValueError, match="evaluators=sarmae_jax.evaluate.in_loop.build"):
        loop.train_and_evaluate(c, str(tmp_path / "run"))
    c.evals.knn.kind = "knn2"
    with pytest.raises(ValueError, match=r"config.evals.knn.kind='knn2'"):
        in_loop.validate("knn", c.evals.knn, c)
    c.evals.knn.kind, c.evals.knn.every_steps, c.evals.knn.at_end = "knn", 0, False
    with pytest.raises(ValueError, match="never run"):
        in_loop.validate("knn", c.evals.knn, c)


def test_in_loop_features_are_those_of_sarmae_eval(tmp_path):
    """The extraction over the mesh (padded batches, each process its rows) equals sarmae-eval's (the 2-process
    version: tests/test_multihost.py)."""
    import jax

    from sarmae_jax.evaluate import encoder as encoder_lib
    from tests.conftest import tiny_pretrain_config, write_tiny_export

    export = write_tiny_export(str(tmp_path / "export"))
    enc = encoder_lib.load(export)
    c = tiny_pretrain_config()
    c.mesh.data = jax.device_count()
    mesh = sharding.make_mesh(c.mesh)
    ev = in_loop.Evaluators(c, mesh, str(tmp_path), {})
    images = np.random.default_rng(0).integers(0, 255, (11, 32, 32, 1), dtype=np.uint8)
    cfg = in_loop.evaluator_config("knn", batch_size=3)
    got = ev.features(enc.params, images, cfg)
    want = encoder_lib.extract_features(enc, images, pooling="gap", batch_size=4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("recipe", ["sarmae_vit_b16", "sarmae_vit_l16"])
def test_the_recipes_commented_evaluators_are_valid_once_uncommented(recipe):
    import importlib

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{recipe}.py")
    lines = open(path).read().splitlines()
    start = lines.index("    # from sarmae_jax.evaluate import in_loop")
    c = importlib.import_module(f"configs.{recipe}").get_config()
    code = []
    for line in lines[start:]:
        if not line.startswith("    #"):
            break
        code.append(line[len("    # "):])
    exec("\n".join(code), {"c": c})
    assert sorted(c.evals) == ["fusar_ship_knn", "fusar_ship_linear_probe", "mstar_knn", "mstar_linear_probe"]
    for name, cfg in c.evals.items():
        in_loop.validate(name, cfg, c)
        assert cfg.dataset.kind == "image_folder" and cfg.every_steps == 10_000
