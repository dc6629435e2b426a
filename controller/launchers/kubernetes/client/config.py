"""Where the Kubernetes API server is and how to authenticate to it: a kubeconfig or the service account.

`load_config` looks, in order, at an explicit kubeconfig path; `$KUBECONFIG` (only its first file: a
``:``-separated list is not merged the way kubectl merges it); the in-cluster service account
(``KUBERNETES_SERVICE_HOST``/``_PORT`` and the mounted token, CA and namespace); ``~/.kube/config``.

Supported credentials: a CA (``certificate-authority`` file or ``-data``) or ``insecure-skip-tls-verify``;
a client certificate and key (files or ``-data``); a bearer ``token`` or ``tokenFile``. A token file is
re-read on every request, so a rotated bound service-account token keeps working. Everything else a
kubeconfig can say about authentication (exec plugins, auth providers, basic auth) or about the route to
the server (proxy-url, tls-server-name) is refused with an error that names it, rather than ignored.
Relative file paths in a kubeconfig are relative to the kubeconfig's directory, as in kubectl.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SERVICE_ACCOUNT_DIR", "KubeConfig", "KubeConfigError", "load_config", "ssl_context"]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Keys of a kubeconfig user or cluster that would change how podq must connect: refused, not ignored.
# A user's credentials must be a token, a tokenFile or a client certificate.
_UNSUPPORTED_USER_KEYS = {
    "exec": "an exec credential plugin",
    "auth-provider": "an auth provider",
    "username": "basic authentication",
    "password": "basic authentication",
}
_UNSUPPORTED_CLUSTER_KEYS = {"proxy-url": "a proxy", "tls-server-name": "a TLS server name override"}


class KubeConfigError(Exception):
    """The configuration cannot be read, or asks for something podq does not support."""


@dataclass(frozen=True)
class KubeConfig:
    server: str
    namespace: str | None = None
    ca_file: Path | None = None
    ca_data: str | None = field(default=None, repr=False)  # PEM
    insecure_skip_tls_verify: bool = False
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    client_cert_data: bytes | None = field(default=None, repr=False)
    client_key_data: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    # Where this came from, for logs: "kubeconfig /path (context x)" or "in-cluster service account".
    source: str = ""


def load_config(
    path: Path | None,
    context: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    home: Path | None = None,
) -> KubeConfig:
    """The configuration to use (see the module docstring for the order); `environ`, `service_account_dir`
    and `home` are there for tests."""
    env = os.environ if environ is None else environ
    if path is not None:
        return _from_kubeconfig(path.expanduser(), context, "the configured path")
    first = next((item for item in env.get("KUBECONFIG", "").split(os.pathsep) if item), None)
    if first is not None:
        return _from_kubeconfig(Path(first).expanduser(), context, "$KUBECONFIG")
    if env.get("KUBERNETES_SERVICE_HOST"):
        if context is not None:
            raise KubeConfigError(
                f"context {context!r} was asked for, but no kubeconfig is configured and the in-cluster "
                "service account has no contexts"
            )
        return _in_cluster(env, service_account_dir)
    default = (home if home is not None else Path.home()) / ".kube" / "config"
    return _from_kubeconfig(default, context, "the default path: no $KUBECONFIG, not in a cluster")


def ssl_context(config: KubeConfig) -> ssl.SSLContext:
    """The TLS context for `config`'s server: its CA (else the system's) and its client certificate."""
    try:
        context = ssl.create_default_context(
            cafile=None if config.ca_file is None else str(config.ca_file), cadata=config.ca_data
        )
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"cannot load the CA certificate of {config.source}: {exc}") from exc
    if config.insecure_skip_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_cert_file or config.client_cert_data:
        # The ssl module loads a certificate chain from files only: write in-line data to a private
        # directory just long enough to load it.
        with tempfile.TemporaryDirectory(prefix="podq-kube-") as scratch:
            cert = config.client_cert_file or _write(Path(scratch) / "cert.pem", config.client_cert_data)
            key = config.client_key_file or _write(Path(scratch) / "key.pem", config.client_key_data)
            try:
                context.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise KubeConfigError(
                    f"cannot load the client certificate of {config.source}: {exc}"
                ) from exc
    return context


def _write(path: Path, data: bytes | None) -> Path:
    path.touch(mode=0o600)
    path.write_bytes(data or b"")
    return path


def _in_cluster(env: Mapping[str, str], directory: Path) -> KubeConfig:
    host, port = env["KUBERNETES_SERVICE_HOST"], env.get("KUBERNETES_SERVICE_PORT", "443")
    token_file, ca_file, namespace_file = directory / "token", directory / "ca.crt", directory / "namespace"
    if not token_file.is_file():
        raise KubeConfigError(
            f"KUBERNETES_SERVICE_HOST is set but there is no service-account token at {token_file} "
            "(is automountServiceAccountToken false?)"
        )
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else ""
    return KubeConfig(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        namespace=namespace or None,
        ca_file=ca_file if ca_file.is_file() else None,
        token_file=token_file,
        source="in-cluster service account",
    )


def _from_kubeconfig(path: Path, context: str | None, origin: str) -> KubeConfig:
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise KubeConfigError(f"kubeconfig {path} does not exist (from {origin})") from None
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path} (from {origin}): {exc}") from exc
    if not isinstance(document, dict):
        raise KubeConfigError(f"kubeconfig {path} is not a YAML mapping")
    name = context or document.get("current-context")
    if not name:
        raise KubeConfigError(f"kubeconfig {path} has no current-context and no context was asked for")
    where = f"kubeconfig {path} (context {name})"
    ctx = _named(document, "contexts", "context", name, path)
    cluster = _named(document, "clusters", "cluster", ctx.get("cluster"), path)
    user = _named(document, "users", "user", ctx.get("user"), path) if ctx.get("user") else {}
    _refuse(user, _UNSUPPORTED_USER_KEYS, f"user {ctx.get('user')!r}", where)
    _refuse(cluster, _UNSUPPORTED_CLUSTER_KEYS, f"cluster {ctx.get('cluster')!r}", where)
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeConfigError(
            f"{where}: cluster {ctx.get('cluster')!r} has no http(s) server URL: {server!r}"
        )
    base = path.parent

    def file(section: Mapping[str, Any], key: str) -> Path | None:
        value = section.get(key)
        return None if not value else base / str(value)

    def data(section: Mapping[str, Any], key: str) -> bytes | None:
        value = section.get(key)
        if not value:
            return None
        try:
            return base64.b64decode(str(value), validate=True)
        except binascii.Error as exc:
            raise KubeConfigError(f"{where}: {key} is not valid base64: {exc}") from exc

    config = KubeConfig(
        server=server.rstrip("/"),
        namespace=ctx.get("namespace") or None,
        ca_file=file(cluster, "certificate-authority"),
        ca_data=None if (ca := data(cluster, "certificate-authority-data")) is None else ca.decode(),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        client_cert_file=file(user, "client-certificate"),
        client_key_file=file(user, "client-key"),
        client_cert_data=data(user, "client-certificate-data"),
        client_key_data=data(user, "client-key-data"),
        token=str(user["token"]) if user.get("token") else None,
        token_file=file(user, "tokenFile"),
        source=where,
    )
    has_cert = config.client_cert_file is not None or config.client_cert_data is not None
    has_key = config.client_key_file is not None or config.client_key_data is not None
    if has_cert != has_key:
        raise KubeConfigError(
            f"{where}: user {ctx.get('user')!r} has a client certificate or key without the other"
        )
    return config


def _named(document: Mapping[str, Any], section: str, key: str, name: object, path: Path) -> dict[str, Any]:
    entries = document.get(section) or []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key) or {}
            if not isinstance(value, dict):
                raise KubeConfigError(f"kubeconfig {path}: {key} {name!r} is not a mapping")
            return value
    known = ", ".join(repr(e.get("name")) for e in entries if isinstance(e, dict)) or "none"
    raise KubeConfigError(f"kubeconfig {path} has no {key} named {name!r} (it has: {known})")


def _refuse(section: Mapping[str, Any], unsupported: Mapping[str, str], what: str, where: str) -> None:
    for key, meaning in unsupported.items():
        value = section.get(key)
        if not value:
            continue
        detail = ""
        if key == "exec" and isinstance(value, dict):
            detail = f", command {value.get('command')!r}"
        elif key == "auth-provider" and isinstance(value, dict):
            detail = f" {value.get('name')!r}"
        raise KubeConfigError(f"{where}: {what} uses {meaning} ({key}{detail}), which podq does not support")
