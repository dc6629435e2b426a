"""Where the kubernetes launcher finds the API server and its credentials (client/config.py, on top of
`kubernetes.config`): what kubectl accepts is accepted, and what cannot be used is refused in one line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from controller.launchers.kubernetes.client.config import KubeConfigError, load_config

pytestmark = pytest.mark.unit

SERVER = "https://10.1.2.3:6443"
EXEC_API = "client.authentication.k8s.io/v1"


def kubeconfig(
    path: Path,
    *,
    user: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    current: str | None = "main",
    namespace: str | None = "work",
    names: tuple[str, str, str] = ("c", "u", "main"),
) -> Path:
    """Write a kubeconfig with context `main` (cluster c, user u) and `other` (cluster c, no user)."""
    c, u, main = names
    context: dict[str, Any] = {"cluster": c, "user": u} | ({"namespace": namespace} if namespace else {})
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": c, "cluster": {"server": SERVER, **(cluster or {})}}],
        "users": [{"name": u, "user": user or {}}],
        "contexts": [
            {"name": main, "context": context},
            {"name": f"other-{main}", "context": {"cluster": c}},
        ],
    }
    if current:
        document["current-context"] = current
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def credential(token: str) -> str:
    return json.dumps({"apiVersion": EXEC_API, "kind": "ExecCredential", "status": {"token": token}})


def test_token_insecure_proxy_and_tls_server_name(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        user={"token": "s3cret"},
        cluster={"insecure-skip-tls-verify": True, "proxy-url": "http://proxy:3128", "tls-server-name": "k"},
    )
    config = load_config(path, None)
    c = config.configuration
    assert (config.server, config.namespace) == (SERVER, "work")
    assert (c.api_key["BearerToken"], c.verify_ssl, c.proxy, c.tls_server_name) == (
        "Bearer s3cret",
        False,
        "http://proxy:3128",
        "k",
    )
    assert config.source == f"kubeconfig {path} (context main)"
    assert "s3cret" not in repr(config)


def test_file_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "conf" / "pki").mkdir(parents=True)
    (tmp_path / "conf" / "pki" / "ca.crt").write_text("CA")
    (tmp_path / "token").write_text("from-a-file\n")
    path = kubeconfig(
        tmp_path / "conf" / "kubeconfig",
        cluster={"certificate-authority": "pki/ca.crt"},
        user={"tokenFile": "../token"},
    )
    c = load_config(path, None).configuration
    assert Path(c.ssl_ca_cert) == tmp_path / "conf" / "pki" / "ca.crt"
    assert c.api_key["BearerToken"].strip() == "Bearer from-a-file"


def test_an_exec_plugin_gives_the_token(tmp_path: Path) -> None:
    plugin = script(tmp_path / "plugin", f"cat <<'EOF'\n{credential('from-exec')}\nEOF\n")
    path = kubeconfig(tmp_path / "config", user={"exec": {"apiVersion": EXEC_API, "command": plugin}})
    assert load_config(path, None).configuration.api_key["BearerToken"] == "Bearer from-exec"


def test_a_kubeconfig_list_is_merged_and_the_context_may_come_from_the_second(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "a", user={"token": "a"}, current=None, names=("ca", "ua", "main"))
    second = kubeconfig(
        tmp_path / "b",
        user={"token": "b"},
        cluster={"insecure-skip-tls-verify": True},
        current="second",
        namespace="from-b",
        names=("cb", "ub", "second"),
    )
    listed = {"KUBECONFIG": f"{tmp_path / 'absent'}{os.pathsep}{first}{os.pathsep}{second}"}
    current = load_config(None, None, environ=listed)  # the only current-context is the second file's
    assert (current.namespace, current.configuration.api_key["BearerToken"]) == ("from-b", "Bearer b")
    named = load_config(None, "main", environ=listed)
    assert (named.namespace, named.configuration.api_key["BearerToken"]) == ("work", "Bearer a")


class Broken(NamedTuple):
    user: dict[str, Any] | None
    cluster: dict[str, Any] | None
    current: str | None
    context: str | None
    error: str


def broken_cases(tmp_path: Path) -> dict[str, Broken]:
    fails = script(tmp_path / "fails", "echo 'no credentials for you' >&2\nexit 1\n")
    garbage = script(tmp_path / "garbage", "echo 'this is not json'\n")
    tokenless = json.dumps({"apiVersion": EXEC_API, "kind": "ExecCredential", "status": {}})
    empty = script(tmp_path / "empty", f"echo '{tokenless}'\n")

    def exec_user(command: str) -> dict[str, Any]:
        return {"exec": {"apiVersion": EXEC_API, "command": command}}

    return {
        "unknown-context": Broken(None, None, "main", "nope", "Expected object with name nope"),
        "exec-exits-1": Broken(
            exec_user(fails), None, "main", None, "exec credential plugin failed: exec: process returned 1"
        ),
        "exec-prints-garbage": Broken(
            exec_user(garbage), None, "main", None, "plugin failed: exec: failed to decode process output"
        ),
        "exec-prints-no-token": Broken(
            exec_user(empty), None, "main", None, "plugin printed no token or client certificate"
        ),
        "exec-not-found": Broken(exec_user(str(tmp_path / "absent")), None, "main", None, "plugin failed"),
        "server-without-scheme": Broken(
            None, {"server": "10.1.2.3:6443"}, "main", None, "has no http(s) server URL"
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "unknown-context",
        "exec-exits-1",
        "exec-prints-garbage",
        "exec-prints-no-token",
        "exec-not-found",
        "server-without-scheme",
    ],
)
def test_unusable_kubeconfigs_are_refused_clearly(tmp_path: Path, name: str) -> None:
    case = broken_cases(tmp_path)[name]
    path = kubeconfig(tmp_path / "config", user=case.user, cluster=case.cluster, current=case.current)
    with pytest.raises(KubeConfigError) as raised:
        load_config(path, case.context)
    assert case.error in str(raised.value)
    assert str(path) in str(raised.value)


def test_a_missing_or_unparsable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        KubeConfigError, match=r"kubeconfig .*/absent does not exist \(from the configured path\)"
    ):
        load_config(tmp_path / "absent", None)
    (tmp_path / "list").write_text("- a\n- b\n")
    with pytest.raises(KubeConfigError, match="is not a YAML mapping"):
        load_config(tmp_path / "list", None)
    (tmp_path / "garbage").write_text("key: [unclosed\n")
    with pytest.raises(KubeConfigError, match="cannot read kubeconfig"):
        load_config(tmp_path / "garbage", None)
    env = {"KUBECONFIG": f"{tmp_path / 'x'}{os.pathsep}{tmp_path / 'y'}"}
    with pytest.raises(KubeConfigError, match=r"do not exist \(none of them\) \(from \$KUBECONFIG\)"):
        load_config(None, None, environ=env)


IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_the_in_cluster_service_account(tmp_path: Path) -> None:
    service_account = tmp_path / "sa"
    service_account.mkdir()
    (service_account / "token").write_text("sa-token")
    (service_account / "ca.crt").write_text("CA")
    (service_account / "namespace").write_text("podq\n")
    config = load_config(None, None, environ=IN_CLUSTER, service_account_dir=service_account)
    assert (config.server, config.namespace, config.token_file) == (
        "https://10.96.0.1:443",
        "podq",
        service_account / "token",
    )
    assert config.configuration.api_key["BearerToken"] == "bearer sa-token"
    assert config.configuration.refresh_api_key_hook is not None  # the token is re-read as it rotates

    with pytest.raises(KubeConfigError, match="context 'main' was asked for"):
        load_config(None, "main", environ=IN_CLUSTER, service_account_dir=service_account)
    (service_account / "token").unlink()
    with pytest.raises(KubeConfigError, match="automountServiceAccountToken"):
        load_config(None, None, environ=IN_CLUSTER, service_account_dir=service_account)


def test_without_kubeconfig_or_cluster_the_default_path_is_read(tmp_path: Path) -> None:
    kubeconfig(tmp_path / ".kube" / "config", user={"token": "t"})
    assert load_config(None, None, environ={}, home=tmp_path).namespace == "work"
    with pytest.raises(KubeConfigError, match=r"from the default path: no \$KUBECONFIG, not in a cluster"):
        load_config(None, None, environ={}, home=tmp_path / "nobody")
