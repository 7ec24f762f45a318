"""Configuration: runtime.toml + environment, and bad configuration stopping start-up with one clear line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from actors import config
from actors.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_defaults():
    cfg = config.load({})
    assert cfg.backend == "process" and cfg.nats_url is None and cfg.mongo_uri is None
    assert cfg.minio_endpoint is None and cfg.data_dir == Path(".the0") and cfg.nats_port == 4222
    assert cfg.storage_env() == {"THE0_OBJECTS_DIR": str(Path(".the0/objects").resolve())}
    assert cfg.restart.backoff_initial == 1.0 and cfg.restart.backoff_max == 300.0 and cfg.restart.reset_after == 600


def test_environment_overrides():
    cfg = config.load({
        "THE0_BACKEND": "docker", "THE0_DATA_DIR": "/tmp/x", "NATS_URL": "nats://n:4222", "MONGO_URI": "mongodb://m",
        "MINIO_ENDPOINT": "s3:9000", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b", "MINIO_USE_SSL": "true",
        "THE0_HTTP_ADDR": "0.0.0.0:9090", "THE0_RECONCILE_INTERVAL": "5", "THE0_DOCKER_NETWORK": "host",
        "THE0_NATS_PORT": "4333", "THE0_LEAVE_BOTS_RUNNING": "yes",
    })
    assert (cfg.backend, cfg.data_dir, cfg.nats_url, cfg.mongo_uri) == ("docker", Path("/tmp/x"), "nats://n:4222", "mongodb://m")
    assert cfg.storage_env() == {"MINIO_ENDPOINT": "s3:9000", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b",
                                 "MINIO_USE_SSL": "true"}
    assert cfg.http_addr == "0.0.0.0:9090" and cfg.reconcile_interval == 5.0 and cfg.docker.network == "host"
    assert cfg.nats_port == 4333 and cfg.leave_bots_running is True


@pytest.mark.parametrize("env, words", [
    ({"THE0_BACKEND": "podman"}, "THE0_BACKEND"),
    ({"THE0_NATS_PORT": "70000"}, "THE0_NATS_PORT"),
    ({"THE0_NATS_PORT": "abc"}, "THE0_NATS_PORT"),
    ({"THE0_RECONCILE_INTERVAL": "0"}, "THE0_RECONCILE_INTERVAL"),
    ({"THE0_HTTP_ADDR": "8080"}, "THE0_HTTP_ADDR"),
    ({"MINIO_ENDPOINT": "s3:9000"}, "MINIO_ACCESS_KEY"),
    ({"MINIO_USE_SSL": "maybe"}, "MINIO_USE_SSL"),
    ({"THE0_CONFIG": "/nonexistent/runtime.toml"}, "does not exist"),
])
def test_bad_settings_name_the_setting(env, words):
    with pytest.raises(ConfigError, match=words):
        config.load(env)


def test_bad_toml(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text("[restart\npolicy = 1")
    with pytest.raises(ConfigError, match="cannot read"):
        config.load({}, bad)
    bad.write_text("[restart]\nbackof_initial = 2\n")
    with pytest.raises(ConfigError, match="backof_initial"):
        config.load({}, bad)
    bad.write_text("[restart]\npolicy = \"sometimes\"\n")
    with pytest.raises(ConfigError, match="policy"):
        config.load({}, bad)
    bad.write_text("[nonsense]\nx = 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        config.load({}, bad)


def test_service_refuses_bad_configuration_with_one_line():
    r = subprocess.run([sys.executable, "-m", "actors.main"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "THE0_BACKEND": "podman"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "THE0_BACKEND='podman'" in lines[0] and "process, docker, kubernetes" in lines[0]
