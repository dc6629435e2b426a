"""Where the kubernetes launcher finds the API server and its credentials (launchers/kube_config)."""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from controller.launchers.kubernetes.client.config import (
    KubeConfig,
    KubeConfigError,
    load_config,
    ssl_context,
)

pytestmark = pytest.mark.unit

SERVER = "https://10.1.2.3:6443"


def kubeconfig(
    path: Path,
    *,
    user: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    current: str | None = "main",
    namespace: str | None = "work",
) -> Path:
    """Write a kubeconfig with contexts "main" (cluster c, user u) and "other" (cluster c, no user)."""
    context: dict[str, Any] = {"cluster": "c", "user": "u"} | ({"namespace": namespace} if namespace else {})
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": SERVER, **(cluster or {})}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": "main", "context": context}, {"name": "other", "context": {"cluster": "c"}}],
    }
    if current:
        document["current-context"] = current
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_inline_data_is_decoded(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        cluster={"certificate-authority-data": b64(b"CA PEM")},
        user={"client-certificate-data": b64(b"CERT PEM"), "client-key-data": b64(b"KEY PEM")},
    )
    config = load_config(path, None)
    assert (config.server, config.namespace) == (SERVER, "work")
    assert (config.ca_data, config.client_cert_data, config.client_key_data) == (
        "CA PEM",
        b"CERT PEM",
        b"KEY PEM",
    )
    assert (config.ca_file, config.client_cert_file, config.token, config.token_file) == (
        None,
        None,
        None,
        None,
    )
    assert "KEY PEM" not in repr(config) and "CERT PEM" not in repr(config)


def test_file_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "conf" / "kubeconfig",
        cluster={"certificate-authority": "pki/ca.crt"},
        user={"client-certificate": "/etc/abs/cert.pem", "client-key": "key.pem", "tokenFile": "../token"},
    )
    config = load_config(path, None)
    assert config.ca_file == tmp_path / "conf" / "pki" / "ca.crt"
    assert config.client_cert_file == Path("/etc/abs/cert.pem")
    assert config.client_key_file == tmp_path / "conf" / "key.pem"
    assert config.token_file == tmp_path / "conf" / ".." / "token"


def test_token_insecure_and_the_named_context(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config", user={"token": "s3cret"}, cluster={"insecure-skip-tls-verify": True}
    )
    config = load_config(path, None)
    assert (config.token, config.insecure_skip_tls_verify) == ("s3cret", True)
    assert "s3cret" not in repr(config)
    assert ssl_context(config).verify_mode == ssl.CERT_NONE
    other = load_config(path, "other")
    assert (other.token, other.namespace, other.source) == (None, None, f"kubeconfig {path} (context other)")


class Broken(NamedTuple):
    user: dict[str, Any] | None
    cluster: dict[str, Any] | None
    current: str | None
    context: str | None
    error: str


@pytest.mark.parametrize(
    "case",
    [
        Broken(None, None, "main", "nope", "no context named 'nope' (it has: 'main', 'other')"),
        Broken(None, None, None, None, "has no current-context and no context was asked for"),
        Broken(
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}},
            None,
            "main",
            None,
            "user 'u' uses an exec credential plugin (exec, command 'aws'), which podq does not support",
        ),
        Broken(
            {"auth-provider": {"name": "oidc"}}, None, "main", None, "an auth provider (auth-provider 'oidc')"
        ),
        Broken({"username": "a", "password": "b"}, None, "main", None, "uses basic authentication"),
        Broken(
            None, {"proxy-url": "http://proxy:3128"}, "main", None, "cluster 'c' uses a proxy (proxy-url)"
        ),
        Broken(None, {"server": "10.1.2.3:6443"}, "main", None, "has no http(s) server URL: '10.1.2.3:6443'"),
        Broken(None, {"certificate-authority-data": "not base64!"}, "main", None, "is not valid base64"),
        Broken(
            {"client-certificate-data": b64(b"CERT")},
            None,
            "main",
            None,
            "certificate or key without the other",
        ),
    ],
    ids=[
        "unknown-context",
        "no-current-context",
        "exec-plugin",
        "auth-provider",
        "basic-auth",
        "proxy-url",
        "server-without-scheme",
        "bad-base64",
        "cert-without-key",
    ],
)
def test_unusable_kubeconfigs_are_refused_clearly(tmp_path: Path, case: Broken) -> None:
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
    (tmp_path / "list").write_text("- just\n- a list\n")
    with pytest.raises(KubeConfigError, match="is not a YAML mapping"):
        load_config(tmp_path / "list", None)
    (tmp_path / "garbage").write_text("a: [unclosed\n")
    with pytest.raises(KubeConfigError, match="cannot read kubeconfig"):
        load_config(tmp_path / "garbage", None)


# ------------------------------------------------------------------ which source wins


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text("sa-token\n")
    (directory / "ca.crt").write_text("CA")
    (directory / "namespace").write_text("podq-workers\n")
    return directory


IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_in_cluster_reads_the_service_account(service_account: Path) -> None:
    config = load_config(None, None, environ=IN_CLUSTER, service_account_dir=service_account)
    assert config == KubeConfig(
        server="https://10.96.0.1:443",
        namespace="podq-workers",
        ca_file=service_account / "ca.crt",
        token_file=service_account / "token",
        source="in-cluster service account",
    )
    assert config.token is None  # read from the file per request, so a rotated token is picked up
    ipv6 = load_config(
        None,
        None,
        environ={"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
        service_account_dir=service_account,
    )
    assert ipv6.server == "https://[fd00::1]:6443"


def test_in_cluster_without_a_token_or_with_a_context_is_refused(service_account: Path) -> None:
    with pytest.raises(KubeConfigError, match="context 'main' was asked for"):
        load_config(None, "main", environ=IN_CLUSTER, service_account_dir=service_account)
    (service_account / "token").unlink()
    with pytest.raises(KubeConfigError, match=r"no service-account token at .*/token"):
        load_config(None, None, environ=IN_CLUSTER, service_account_dir=service_account)


def test_the_order_of_sources(tmp_path: Path, service_account: Path) -> None:
    explicit = kubeconfig(tmp_path / "explicit", user={"token": "explicit"})
    first = kubeconfig(tmp_path / "first", user={"token": "first"})
    home_config = kubeconfig(tmp_path / "home" / ".kube" / "config", user={"token": "home"})

    def token(path: Path | None, env: dict[str, str]) -> str | None:
        config = load_config(
            path, None, environ=env, service_account_dir=service_account, home=home_config.parents[1]
        )
        return config.token_file.read_text().strip() if config.token_file else config.token

    kubeconfig_list = {"KUBECONFIG": f"{first}:{tmp_path / 'absent'}", **IN_CLUSTER}
    assert token(explicit, kubeconfig_list) == "explicit"
    assert token(None, kubeconfig_list) == "first"
    assert token(None, {"KUBECONFIG": "", **IN_CLUSTER}) == "sa-token"
    assert token(None, {}) == "home"
    home_config.unlink()
    with pytest.raises(KubeConfigError, match="from the default path: no \\$KUBECONFIG, not in a cluster"):
        token(None, {})


# ------------------------------------------------------------------ TLS material


@pytest.fixture(scope="module")
def pem_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A throwaway self-signed certificate and its key (PEM), made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=podq-test", "-days", "1", "-keyout", "key.pem", "-out", "cert.pem"],
        cwd=directory, check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return (directory / "cert.pem").read_bytes(), (directory / "key.pem").read_bytes()


def test_ssl_context_loads_inline_and_file_credentials(tmp_path: Path, pem_pair: tuple[bytes, bytes]) -> None:
    cert, key = pem_pair
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    inline = KubeConfig(SERVER, ca_data=cert.decode(), client_cert_data=cert, client_key_data=key)
    files = KubeConfig(
        SERVER,
        ca_file=tmp_path / "cert.pem",
        client_cert_file=tmp_path / "cert.pem",
        client_key_file=tmp_path / "key.pem",
    )
    for config in (inline, files):
        context = ssl_context(config)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "podq-test"),),)]


def test_ssl_context_names_tls_material_it_cannot_load(tmp_path: Path, pem_pair: tuple[bytes, bytes]) -> None:
    cert, _ = pem_pair
    bad_key = KubeConfig(SERVER, client_cert_data=cert, client_key_data=b"not a key", source="kubeconfig x")
    with pytest.raises(KubeConfigError, match="cannot load the client certificate of kubeconfig x"):
        ssl_context(bad_key)
    missing_ca = KubeConfig(SERVER, ca_file=tmp_path / "absent.crt", source="kubeconfig y")
    with pytest.raises(KubeConfigError, match="cannot load the CA certificate of kubeconfig y"):
        ssl_context(missing_ca)
