"""Runtime configuration: config/runtime.toml (or THE0_CONFIG) overlaid by environment variables.

``load()`` returns a frozen ``Config`` or raises ``ConfigError`` whose message is one line an operator can
act on. Nothing else reads the environment for runtime settings.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

DEFAULT_TOML = Path(__file__).resolve().parent.parent / "config" / "runtime.toml"
BACKENDS = ("process", "docker", "kubernetes")


class ConfigError(ValueError):
    """Bad configuration; the message names the setting and what is allowed."""


@dataclass(frozen=True)
class RestartDefaults:
    policy: str = "always"
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    backoff_jitter: float = 0.1
    reset_after: float = 600.0
    max_restarts: int | None = None
    stop_grace: float = 15.0  # SIGTERM -> SIGKILL; longer than the daemon's final sync deadline


@dataclass(frozen=True)
class LimitDefaults:
    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 256
    max_memory_mb: int = 8192
    max_cpus: float = 4.0
    max_pids: int = 4096


@dataclass(frozen=True)
class DockerConfig:
    network: str = "bridge"  # THE0_DOCKER_NETWORK; "host" in tests
    image_prefix: str = "the0-runtime"
    image_tag: str = "0.1.0"


@dataclass(frozen=True)
class KubernetesConfig:
    namespace: str = "the0"
    kubeconfig: str | None = None
    image_prefix: str = "the0-runtime"
    image_tag: str = "0.1.0"
    lease_name: str = "the0-runtime-leader"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    storage_secret: str = "the0-storage"  # Secret holding MINIO_* for the daemon containers


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path(".the0")
    backend: str = "process"
    nats_url: str | None = None  # None: start the embedded nats-server
    nats_port: int = 4222
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_creds: str | None = None
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    mongo_uri: str | None = None
    mongo_bots_db: str = "bot_runner"
    mongo_schedules_db: str = "bot_scheduler"
    minio_endpoint: str | None = None
    minio_access_key: str | None = None
    minio_secret_key: str | None = None
    minio_use_ssl: bool = False
    http_addr: str = "127.0.0.1:8080"
    reconcile_interval: float = 30.0
    leave_bots_running: bool = False  # on shutdown; the operator's flag
    instance_id: str = ""
    restart: RestartDefaults = field(default_factory=RestartDefaults)
    limits: LimitDefaults = field(default_factory=LimitDefaults)
    docker: DockerConfig = field(default_factory=DockerConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    def storage_env(self) -> dict[str, str]:
        """The object store's variables as the daemon reads them (DESIGN.md); never given to a bot."""
        if self.minio_endpoint:
            return {
                "MINIO_ENDPOINT": self.minio_endpoint,
                "MINIO_ACCESS_KEY": self.minio_access_key or "",
                "MINIO_SECRET_KEY": self.minio_secret_key or "",
                "MINIO_USE_SSL": "true" if self.minio_use_ssl else "false",
            }
        return {"THE0_OBJECTS_DIR": str(self.objects_dir.resolve())}


def _section(cls: type, raw: Any, name: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    known = {f for f in cls.__dataclass_fields__}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"[{name}] has unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return cls(**raw)


def _bool(v: str, name: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={v!r} is not a boolean (use true or false)")


def load(env: Mapping[str, str] | None = None, path: str | os.PathLike | None = None) -> Config:
    env = os.environ if env is None else env
    path = Path(path or env.get("THE0_CONFIG") or DEFAULT_TOML)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
    elif env.get("THE0_CONFIG"):
        raise ConfigError(f"THE0_CONFIG={path} does not exist")
    try:
        sections = {
            "restart": _section(RestartDefaults, raw.pop("restart", None), "restart"),
            "limits": _section(LimitDefaults, raw.pop("limits", None), "limits"),
            "docker": _section(DockerConfig, raw.pop("docker", None), "docker"),
            "kubernetes": _section(KubernetesConfig, raw.pop("kubernetes", None), "kubernetes"),
        }
        runtime = raw.pop("runtime", {})
        if raw:
            raise ConfigError(f"unknown section(s) {', '.join(sorted(raw))} in {path}")
        rt = _section(_RuntimeSection, runtime, "runtime")
        cfg = Config(**sections, **{k: getattr(rt, k) for k in _RuntimeSection.__dataclass_fields__})
        cfg = replace(cfg, data_dir=Path(cfg.data_dir))
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None

    over: dict[str, Any] = {}
    s = lambda k: env.get(k) or None  # noqa: E731
    if s("THE0_DATA_DIR"):
        over["data_dir"] = Path(env["THE0_DATA_DIR"])
    if s("THE0_BACKEND"):
        over["backend"] = env["THE0_BACKEND"]
    for var, key in (
        ("NATS_URL", "nats_url"), ("NATS_USER", "nats_user"), ("NATS_PASSWORD", "nats_password"),
        ("NATS_TOKEN", "nats_token"), ("NATS_CREDS", "nats_creds"), ("NATS_TLS_CA", "nats_tls_ca"),
        ("NATS_TLS_CERT", "nats_tls_cert"), ("NATS_TLS_KEY", "nats_tls_key"), ("MONGO_URI", "mongo_uri"),
        ("MINIO_ENDPOINT", "minio_endpoint"), ("MINIO_ACCESS_KEY", "minio_access_key"),
        ("MINIO_SECRET_KEY", "minio_secret_key"), ("THE0_HTTP_ADDR", "http_addr"),
        ("THE0_INSTANCE_ID", "instance_id"), ("THE0_MONGO_BOTS_DB", "mongo_bots_db"),
        ("THE0_MONGO_SCHEDULES_DB", "mongo_schedules_db"),
    ):
        if s(var):
            over[key] = env[var]
    if s("MINIO_USE_SSL"):
        over["minio_use_ssl"] = _bool(env["MINIO_USE_SSL"], "MINIO_USE_SSL")
    if s("THE0_LEAVE_BOTS_RUNNING"):
        over["leave_bots_running"] = _bool(env["THE0_LEAVE_BOTS_RUNNING"], "THE0_LEAVE_BOTS_RUNNING")
    for var, key, conv in (
        ("THE0_NATS_PORT", "nats_port", int),
        ("THE0_RECONCILE_INTERVAL", "reconcile_interval", float),
    ):
        if s(var):
            try:
                over[key] = conv(env[var])
            except ValueError:
                raise ConfigError(f"{var}={env[var]!r} is not a number") from None
    if s("THE0_DOCKER_NETWORK"):
        over["docker"] = replace(sections["docker"], network=env["THE0_DOCKER_NETWORK"])
    if s("THE0_K8S_NAMESPACE") or s("KUBECONFIG"):
        over["kubernetes"] = replace(
            over.get("kubernetes", sections["kubernetes"]),
            namespace=env.get("THE0_K8S_NAMESPACE") or sections["kubernetes"].namespace,
            kubeconfig=env.get("KUBECONFIG") or sections["kubernetes"].kubeconfig,
        )
    cfg = replace(cfg, **over)
    return validate(cfg)


@dataclass(frozen=True)
class _RuntimeSection:
    data_dir: str = ".the0"
    backend: str = "process"
    nats_port: int = 4222
    http_addr: str = "127.0.0.1:8080"
    reconcile_interval: float = 30.0
    leave_bots_running: bool = False

def validate(cfg: Config) -> Config:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"THE0_BACKEND={cfg.backend!r} is not a backend; use one of {', '.join(BACKENDS)}")
    if not (0 < cfg.nats_port < 65536):
        raise ConfigError(f"THE0_NATS_PORT={cfg.nats_port} is not a TCP port")
    if cfg.reconcile_interval < 1:
        raise ConfigError(f"THE0_RECONCILE_INTERVAL={cfg.reconcile_interval} must be at least 1 second")
    host, _, port = cfg.http_addr.rpartition(":")
    if not host or not port.isdigit() or not (0 <= int(port) < 65536):
        raise ConfigError(f"THE0_HTTP_ADDR={cfg.http_addr!r} must be HOST:PORT")
    if cfg.restart.policy not in ("always", "on-failure", "never"):
        raise ConfigError(f"[restart] policy={cfg.restart.policy!r}; use always, on-failure or never")
    if cfg.minio_endpoint and not (cfg.minio_access_key and cfg.minio_secret_key):
        raise ConfigError("MINIO_ENDPOINT is set but MINIO_ACCESS_KEY or MINIO_SECRET_KEY is missing")
    if not cfg.instance_id:
        import socket

        cfg = replace(cfg, instance_id=f"{socket.gethostname()}-{os.getpid()}")
    return cfg
