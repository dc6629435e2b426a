"""Where the Kubernetes API server is and how to authenticate to it, loaded by `kubernetes.config`.

`load_config` looks, in order, at an explicit kubeconfig path; `$KUBECONFIG` (a ``:``-separated list,
merged: the first file naming a cluster, user or context wins, as in kubectl, and missing files are
skipped; where several files set ``current-context`` the official client takes the last, kubectl the
first); the in-cluster service account (``KUBERNETES_SERVICE_HOST``); then ``~/.kube/config``.

Everything the official client accepts in a kubeconfig works: a CA or
``insecure-skip-tls-verify``, client certificates, tokens and token files, exec credential plugins (EKS
``aws eks get-token``, GKE ``gke-gcloud-auth-plugin``, AKS ``kubelogin``; re-run when their credential
expires), auth providers, ``proxy-url`` and ``tls-server-name``. In a cluster the service-account token
is re-read every minute, so a rotated bound token keeps working.

Every failure is one `KubeConfigError` whose message names the file, the context and the problem: a missing
file, an unknown context, an exec plugin that fails or prints something that is no credential.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.exec_provider import ExecProvider
from kubernetes.config.incluster_config import SERVICE_TOKEN_FILENAME, InClusterConfigLoader

__all__ = ["SERVICE_ACCOUNT_DIR", "KubeConfig", "KubeConfigError", "for_server", "load_config"]

SERVICE_ACCOUNT_DIR = Path(SERVICE_TOKEN_FILENAME).parent


class KubeConfigError(Exception):
    """The configuration cannot be read or used."""


@dataclass(frozen=True)
class KubeConfig:
    """A loaded `kubernetes.client.Configuration` and what podq needs to know beside it."""

    configuration: Any = field(repr=False)  # kubernetes.client.Configuration
    namespace: str | None = None
    # The in-cluster service-account token (for the pods' owner reference, see owner.py).
    token_file: Path | None = None
    # Where this came from, for logs: "kubeconfig /path (context x)" or "in-cluster service account".
    source: str = ""

    @property
    def server(self) -> str:
        return str(self.configuration.host)


def for_server(server: str, *, token: str | None = None) -> KubeConfig:
    """A configuration for a plain server URL, without a kubeconfig (tests, benchmarks)."""
    configuration = k8s_client.Configuration()
    configuration.host = server.rstrip("/")
    if token is not None:
        configuration.api_key["BearerToken"] = f"Bearer {token}"
    return KubeConfig(configuration, source=f"server {server}")


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
        return _from_kubeconfig([path.expanduser()], context, "the configured path")
    listed = [Path(item).expanduser() for item in env.get("KUBECONFIG", "").split(os.pathsep) if item]
    if listed:
        return _from_kubeconfig(listed, context, "$KUBECONFIG")
    if env.get("KUBERNETES_SERVICE_HOST"):
        if context is not None:
            raise KubeConfigError(
                f"context {context!r} was asked for, but no kubeconfig is configured and the in-cluster "
                "service account has no contexts"
            )
        return _in_cluster(env, service_account_dir)
    default = (home if home is not None else Path.home()) / ".kube" / "config"
    return _from_kubeconfig([default], context, "the default path: no $KUBECONFIG, not in a cluster")


def _in_cluster(env: Mapping[str, str], directory: Path) -> KubeConfig:
    configuration = k8s_client.Configuration()
    token_file = directory / "token"
    loader = InClusterConfigLoader(
        token_filename=str(token_file),
        cert_filename=str(directory / "ca.crt"),
        try_refresh_token=True,
        environ=env,
    )
    try:
        loader.load_and_set(configuration)
    except (k8s_config.ConfigException, OSError) as exc:
        raise KubeConfigError(
            f"in-cluster service account (KUBERNETES_SERVICE_HOST is set; {directory}): {exc} "
            "(is automountServiceAccountToken false?)"
        ) from None
    namespace_file = directory / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else ""
    return KubeConfig(
        configuration,
        namespace=namespace or None,
        token_file=token_file,
        source="in-cluster service account",
    )


def _from_kubeconfig(paths: list[Path], context: str | None, origin: str) -> KubeConfig:
    files = ":".join(str(p) for p in paths)
    existing = [p for p in paths if p.is_file()]
    if not existing:
        what = "does not exist" if len(paths) == 1 else "do not exist (none of them)"
        raise KubeConfigError(f"kubeconfig {files} {what} (from {origin})")
    for path in existing:
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise KubeConfigError(f"cannot read kubeconfig {path} (from {origin}): {exc}") from None
        if not isinstance(document, dict):
            raise KubeConfigError(f"kubeconfig {path} is not a YAML mapping")
    config_file = os.pathsep.join(str(p) for p in existing)
    configuration = k8s_client.Configuration()
    try:
        loader = k8s_config.kube_config._get_kube_config_loader(
            filename=config_file, active_context=context, persist_config=False
        )
        name = loader.current_context["name"]
        where = f"kubeconfig {config_file} (context {name})"
        logging.getLogger().addFilter(_not_from_the_loader)
        try:
            loader.load_and_set(configuration)
        finally:
            logging.getLogger().removeFilter(_not_from_the_loader)
    except k8s_config.ConfigException as exc:
        raise KubeConfigError(f"kubeconfig {config_file}: {exc}") from None
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise KubeConfigError(f"kubeconfig {config_file}: {type(exc).__name__}: {exc}") from None
    ctx = loader.current_context.get("context") or {}
    _check_exec_credential(loader, configuration, where)
    if not str(configuration.host).startswith(("https://", "http://")):
        raise KubeConfigError(f"{where}: cluster {ctx.get('cluster')!r} has no http(s) server URL")
    return KubeConfig(configuration, namespace=ctx.get("namespace") or None, source=where)


def _not_from_the_loader(record: logging.LogRecord) -> bool:
    """The official loader logs an exec plugin's failure on the root logger and goes on; podq says it once,
    as a `KubeConfigError` (see `_check_exec_credential`): a filter for the root logger meanwhile."""
    return not record.pathname.endswith(os.path.join("kubernetes", "config", "kube_config.py"))


def _check_exec_credential(loader: Any, configuration: Any, where: str) -> None:
    """The official loader logs an exec plugin's failure and goes on without credentials: run the plugin
    again to say why, instead of meeting 401s later."""
    user = loader._user
    if not user or "exec" not in user:
        return
    if configuration.api_key.get("BearerToken") or configuration.cert_file:
        return
    try:
        cwd = loader._get_base_path(loader._cluster.path)
        status = ExecProvider(user["exec"], cwd, loader._cluster).run()
    except Exception as exc:
        detail = " ".join(str(exc).split())  # the plugin's stderr may span lines: one line here
        raise KubeConfigError(f"{where}: the exec credential plugin failed: {detail}") from None
    raise KubeConfigError(
        f"{where}: the exec credential plugin printed no token or client certificate: {sorted(status)}"
    )
