"""The loggers: CSV, MLflow and W&B runs read back with each logger's own reader; tags;
several loggers at once; figures only where a logger can hold them."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvexp.comparison import compare
from cvexp.errors import UserError
from cvexp.loggers.csv_file import CSVLogger
from cvexp.training import train
from tests.conftest import CLI_TINY, run_cli, write_batches_dir

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def test_csv_logger_runs_with_tags_and_the_optimized_metric(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(
        "logger=csv", "tags=[smoke,bn]", "optimized_metric=val/loss", "optimized_mode=min"
    )
    summary = train(cfg)
    run = tmp_path / "run"
    rows = read_csv(run / "metrics.csv")  # in the run directory itself
    assert {"val/acc", "val/loss", "train/loss_epoch", "test/acc", "epoch"} <= set(rows[0])
    val_loss = column(rows, "val/loss")
    assert len(val_loss) == 2  # one per epoch
    assert summary["tags"] == ["smoke", "bn"]
    assert summary["optimized_metric"]["name"] == "val/loss"
    assert summary["optimized_metric"]["mode"] == "min"
    assert summary["optimized_metric"]["best"] == pytest.approx(min(val_loss))
    assert summary["optimized_metric"]["epoch"] == val_loss.index(min(val_loss))
    assert json.loads((run / "summary.json").read_text())["tags"] == ["smoke", "bn"]
    assert yaml.safe_load((run / "hparams.yaml").read_text())["tags"] == "smoke,bn"
    # no logger that holds images: the visualisation callback draws nothing and fails nothing
    assert not (run / "tensorboard").exists()
    (run / ".hydra").mkdir()  # Hydra's record, which composing in-process does not write
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    (row,) = compare([run], out_dir=tmp_path / "cmp")["rows"]
    assert row["best_val_acc_mean"] == pytest.approx(summary["best_val_acc"])
    assert row["ranked_by"] == "val/loss (min)"
    assert row["ranked_value_mean"] == pytest.approx(min(val_loss))


def test_a_csv_log_keeps_its_rows_when_a_run_continues(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path, name="", version="")
    first.log_metrics({"val/acc": 0.1, "epoch": 0}, step=9)
    first.save()
    second = CSVLogger(tmp_path, name="", version="")  # a resumed run opens the same folder
    second.log_metrics({"val/acc": 0.2, "epoch": 1, "val/loss": 1.5}, step=19)
    second.save()
    rows = read_csv(tmp_path / "metrics.csv")
    assert column(rows, "val/acc") == [0.1, 0.2]
    assert column(rows, "val/loss") == [1.5]


@pytest.mark.parametrize("choice", ["many", "[tensorboard,csv]"])
def test_several_loggers_at_once(compose_train, choice: str) -> None:
    assert set(compose_train(f"logger={choice}").logger) == {"tensorboard", "csv"}


def test_tensorboard_and_csv_together(compose_train, tmp_path: Path) -> None:
    train(compose_train("logger=[tensorboard,csv]", "tags=[both]"))
    run = tmp_path / "run"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "viz/predictions" in events.Tags()["images"]
    assert len(events.Scalars("val/acc")) == len(column(read_csv(run / "metrics.csv"), "val/acc"))


def test_an_optimized_metric_that_is_never_logged_fails_in_one_sentence(
    compose_train, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=r"optimized_metric=val/nope is not logged .* val/acc"):
        train(compose_train("logger=none", "optimized_metric=val/nope"))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_the_optimized_best_survives_a_resume_and_sparse_validation(
    compose_train, tmp_path: Path
) -> None:
    # validation every other epoch: no "not logged" error in the epochs without one
    first = train(
        compose_train("logger=none", "trainer.check_val_every_n_epoch=2", "trainer.max_epochs=2")
    )
    assert first["status"] == "completed" and first["optimized_metric"]["epoch"] == 1
    # a fit resumed from last.ckpt keeps the value of the epoch that checkpoint ended
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumed = train(
        compose_train(
            "logger=none",
            "trainer.check_val_every_n_epoch=2",
            "trainer.max_epochs=4",
            f"ckpt_path={last}",
            run_dir=tmp_path / "resumed",
        )
    )
    assert resumed["status"] == "completed", resumed
    assert resumed["optimized_metric"]["best"] == pytest.approx(resumed["best_val_acc"])
    assert resumed["optimized_metric"]["epoch"] == resumed["best_epoch"] in (1, 3)


def test_a_mode_that_is_no_direction_is_refused(compose_train) -> None:
    with pytest.raises(UserError, match="optimized_mode=best is not a direction"):
        train(compose_train("optimized_mode=best"))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason='MLflow is not installed (pip install -e ".[mlflow]")')
def test_mlflow_logger_writes_a_local_store(compose_train, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    log_dir = tmp_path / "logs"
    cfg = compose_train("logger=mlflow", f"paths.log_dir={log_dir}", "tags=[smoke]")
    summary = train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{log_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("cvexp")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["smoke"] == "true"
    assert run.data.tags["cvexp.run_dir"] == str(tmp_path / "run")
    assert run.data.params["optimizer/lr"] == str(cfg.model.optimizer.lr)  # the run's knobs
    assert run.data.params["tags"] == "smoke"
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == 2
    assert max(m.value for m in history) == pytest.approx(summary["best_val_acc"])
    assert run.data.metrics["test/acc"] == pytest.approx(summary["test_acc"])
    # the figures of the last epoch (1), as artifacts under the store's folder
    figures = [f.path for f in client.list_artifacts(run.info.run_id, "viz/predictions")]
    assert "viz/predictions/epoch001.png" in figures
    assert (log_dir / "mlartifacts").is_dir()


def read_wandb_log(path: Path) -> list:
    """The records of a W&B transaction log (run-*.wandb), parsed with W&B's own protobuf
    messages. The file is a LevelDB-style log: a 7-byte header (':W&B', magic, version), then
    32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last); a block's tail shorter than a header is padding."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, chunk = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += block - pos % block
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WANDB, reason='W&B is not installed (pip install -e ".[wandb]")')
def test_wandb_logger_writes_an_offline_run(
    compose_train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))  # nothing written outside
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = train(compose_train("logger=wandb", "tags=[smoke]"))
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    val_acc, tags, config, media = [], [], {}, set()
    for record in read_wandb_log(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            tags += list(record.run.tags)
            config.update({item.key: item.value_json for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: item.value_json for item in record.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            if "val/acc" in items:
                val_acc.append(json.loads(items["val/acc"]))
            media |= {key.split("/")[1] for key in items if key.startswith("viz/")}
    assert tags == ["smoke"]
    assert json.loads(config["tags"]) == "smoke"  # the run's knobs, as W&B's config
    assert max(val_acc) == pytest.approx(summary["best_val_acc"])
    assert {"predictions", "filters", "seconds"} <= media
    assert list((offline / "files" / "media" / "images" / "viz").glob("predictions_*.png"))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason='MLflow is not installed (pip install -e ".[mlflow]")')
def test_resume_logs_on_into_the_same_mlflow_run(tmp_path: Path, tiny) -> None:
    from mlflow import MlflowClient

    write_batches_dir(tmp_path / "data", tiny)
    common = [*CLI_TINY, "logger=mlflow", "callbacks.feature_maps=null"]
    first = run_cli("cvexp-train", *common, "hydra.run.dir=r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    on = run_cli("cvexp-train", "resume=r1", "trainer.max_epochs=2", cwd=tmp_path)
    assert on.returncode == 0, on.stdout + on.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("cvexp")
    (run,) = client.search_runs([experiment.experiment_id])  # one run, not two
    assert json.loads((tmp_path / "r1" / "loggers.json").read_text()) == {"mlflow": run.info.run_id}
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == 2  # epoch 1 from the first command, epoch 2 from the resume
