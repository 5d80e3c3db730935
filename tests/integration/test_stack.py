"""The scaled-out topology of ``docker/compose.yaml``, natively on 127.0.0.1, end to end.

Postgres (a database each for Prefect and MLflow), an S3 server (moto, for MinIO), ``prefect
server`` on Postgres, ``mlflow server`` on Postgres with its artifacts in S3, and a process
work-pool worker. The deployments of ``prefect.yaml`` are registered with ``prefect deploy``;
``train/retrain`` and ``segment-archive/segment-archive`` run through the worker. Checked: the
model in the registry, masks in object storage, the runs in both servers' APIs, and that every
server listens on 127.0.0.1 only. Credentials are random and travel only in environments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from flows.server_process import ServerProcess, free_port
from flows.server_process import prefect_server as prefect_server_process
from pipelines.synthetic import make_raster_dataset
from tests.integration.stack import (
    TINY_TRAINING,
    PostgresServer,
    StackCredentials,
    mlflow_server,
    process_worker,
    running,
    s3_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
POOL = "segflow-pool"
MODEL = "stack-tiles"
CONFIG = TINY_TRAINING


@dataclass
class Stack:
    """Where the stack's servers are, and the environment a client or worker gets."""

    env: dict[str, str]
    credentials: StackCredentials
    prefect_api_url: str
    mlflow_uri: str
    s3_endpoint: str
    servers: list[ServerProcess]


def _client_env(credentials: StackCredentials, s3_endpoint: str, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        AWS_ACCESS_KEY_ID=credentials.s3_key,
        AWS_SECRET_ACCESS_KEY=credentials.s3_secret,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=s3_endpoint,
        MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
        SEGFLOW_HOME=str(root / "segflow-home"),
        SEGFLOW_REPO=str(REPO),
        PREFECT_HOME=str(root / "prefect-client"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every server of the compose file, started in dependency order and stopped in reverse."""
    root = tmp_path_factory.mktemp("stack")
    credentials = StackCredentials.generate()
    postgres = PostgresServer(credentials, root / "postgres.log")
    s3, s3_endpoint = s3_server(root / "s3.log")
    with running(postgres, s3):
        postgres.create_databases("prefect", "mlflow")
        env = _client_env(credentials, s3_endpoint, root)
        _s3_client(env).create_bucket(Bucket="mlflow")
        _s3_client(env).create_bucket(Bucket="segflow-data")
        port = free_port()
        prefect = prefect_server_process(
            port,
            home=root / "prefect-server",
            log_path=root / "prefect.log",
            database_url=postgres.url("prefect", "postgresql+asyncpg"),
        )
        mlflow, mlflow_uri = mlflow_server(
            postgres.url("mlflow"), "mlflow", env, root / "mlflow.log"
        )
        with running(prefect, mlflow):
            env.update(
                PREFECT_API_URL=f"http://127.0.0.1:{port}/api", MLFLOW_TRACKING_URI=mlflow_uri
            )
            _prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
            _prefect(env, "--no-prompt", "deploy", "--all")
            worker = process_worker(POOL, env, root / "worker.log")
            with running(worker):
                yield Stack(
                    env,
                    credentials,
                    env["PREFECT_API_URL"],
                    mlflow_uri,
                    s3_endpoint,
                    [postgres, s3, prefect, mlflow, worker],
                )


def _prefect(env: dict[str, str], *args: str) -> None:
    command = [sys.executable, "-m", "prefect", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


def _s3_client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def _get(url: str, **query: str) -> dict[str, Any]:
    full = f"{url}?{urllib.parse.urlencode(query)}" if query else url
    with urllib.request.urlopen(full, timeout=10) as response:
        return dict(json.loads(response.read()))


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _run_deployment(stack: Stack, name: str, parameters: dict[str, Any]) -> Any:
    """Trigger ``name`` on the server and wait for the worker to finish it (the flow run)."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        flow_run = run_deployment(name, parameters=parameters, timeout=900, poll_interval=2)
    worker_log = stack.servers[-1].log_path.read_text(errors="replace")
    assert flow_run.state.is_completed(), f"{name}: {flow_run.state}\n{worker_log[-4000:]}"
    return flow_run


def test_train_and_segment_deployments_run_on_the_worker(stack: Stack, tmp_path: Path) -> None:
    tiles = make_raster_dataset(tmp_path / "tiles", n_tiles=3, size=(48, 48), seed=21)
    train = _run_deployment(
        stack,
        "train/retrain",
        {
            "source": str(tiles),
            "register": MODEL,
            "config": CONFIG.model_dump(mode="json"),
            "plan_overrides": {"patch_size": [32, 32], "batch_size": 2},
        },
    )

    registered = _get(f"{stack.mlflow_uri}/api/2.0/mlflow/registered-models/get", name=MODEL)
    aliases = {alias["alias"] for alias in registered["registered_model"]["aliases"]}
    assert {"champion", "challenger"} <= aliases

    s3 = _s3_client(stack.env)
    scenes = sorted((tiles / "images").glob("*.tif"))
    for scene in scenes:
        s3.upload_file(str(scene), "segflow-data", f"incoming/{scene.name}")
    segment = _run_deployment(
        stack,
        "segment-archive/segment-archive",
        {
            "source": "s3://segflow-data/incoming/",
            "model": f"models:/{MODEL}@champion",
            "out": "s3://segflow-data/masks/",
        },
    )
    listed = s3.list_objects_v2(Bucket="segflow-data", Prefix="masks/")["Contents"]
    masks = sorted(obj["Key"] for obj in listed if obj["Key"].endswith(".tif"))
    assert masks == [f"masks/{scene.name}" for scene in scenes]
    # The model's weights went to object storage through the MLflow server.
    assert s3.list_objects_v2(Bucket="mlflow").get("KeyCount", 0) > 0

    _check_prefect_api(stack, {train.id, segment.id})
    _check_mlflow_api(stack)


def _check_prefect_api(stack: Stack, flow_run_ids: set[Any]) -> None:
    runs = _post(
        f"{stack.prefect_api_url}/flow_runs/filter",
        {"flow_runs": {"id": {"any_": [str(run_id) for run_id in flow_run_ids]}}},
    )
    assert {run["state_type"] for run in runs} == {"COMPLETED"}
    assert all(run["work_queue_name"] == "default" and run["deployment_id"] for run in runs)
    pool = _get(f"{stack.prefect_api_url}/work_pools/{POOL}")
    assert pool["type"] == "process"


def _check_mlflow_api(stack: Stack) -> None:
    experiments = _get(f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/search", max_results="100")[
        "experiments"
    ]
    ids = [experiment["experiment_id"] for experiment in experiments]
    runs = _post(f"{stack.mlflow_uri}/api/2.0/mlflow/runs/search", {"experiment_ids": ids})["runs"]
    kinds = {run["data"].get("tags", []) and _tag(run, "segflow.kind") for run in runs}
    assert "batch-segmentation" in kinds
    assert any(
        run["info"]["status"] == "FINISHED" and _tag(run, "segflow.kind") != "batch-segmentation"
        for run in runs
    )


def _tag(run: dict[str, Any], key: str) -> str | None:
    return next((tag["value"] for tag in run["data"].get("tags", []) if tag["key"] == key), None)


def _inet_connections(process: psutil.Process) -> list[Any]:
    """The process's sockets; none when it exited since it was listed (a server's short-lived
    helper child: seen once in CI as a FileNotFoundError on /proc/PID/fd)."""
    try:
        return list(process.net_connections(kind="inet"))
    except (psutil.NoSuchProcess, FileNotFoundError):
        return []


def test_servers_listen_on_loopback_only(stack: Stack) -> None:
    listening: dict[str, set[str]] = {}
    for index, server in enumerate(stack.servers):
        assert server.process is not None and server.process.poll() is None, server.command
        root = psutil.Process(server.process.pid)
        for process in [root, *root.children(recursive=True)]:
            for connection in _inet_connections(process):
                if connection.status == psutil.CONN_LISTEN:
                    name = f"{index}:{' '.join(server.command[:4])}"
                    listening.setdefault(name, set()).add(connection.laddr.ip)
    assert len(listening) == len(stack.servers), listening  # every server listens somewhere…
    for server, addresses in listening.items():
        assert addresses <= {"127.0.0.1", "::1"}, (server, addresses)  # …on loopback only


def test_no_credential_reaches_the_logs(stack: Stack) -> None:
    secrets = [stack.env["AWS_SECRET_ACCESS_KEY"], stack.credentials.db_password]
    for log in [server.log_path for server in stack.servers]:
        text = log.read_text(errors="replace")
        assert text and not any(secret in text for secret in secrets), log
