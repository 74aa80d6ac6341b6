"""image/host/sdxl_cloud.py: the calls an instance makes as itself, against a loopback stand-in for the
clouds (tests/image/fake_cloud.py), and its Signature Version 4 against botocore's own signer."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.session
import pytest

from image.host import sdxl_cloud
from tests.image import fake_cloud
from tests.image.conftest import IMAGE
from tests.image.fake_cloud import FakeCloud

HELPER = IMAGE / "host" / "sdxl_cloud.py"
NOW = datetime.datetime(2026, 11, 28, 6, 37, 0, tzinfo=datetime.UTC)
CREDS = {"AccessKeyId": "AKIDEXAMPLE", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "Token": "tok"}


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    fake = FakeCloud()
    yield fake
    fake.close()


def helper(cloud: FakeCloud, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDXL_FAKE_CLOUD_URL": cloud.url}
    return subprocess.run([sys.executable, str(HELPER), *args], env=env, capture_output=True, text=True, timeout=30)


# --- Signature Version 4, as botocore computes it ----------------------------------------------------------------

def botocore_authorization(auth_class, service: str, method: str, url: str, body: bytes, headers: dict) -> str:
    credentials = botocore.credentials.Credentials(CREDS["AccessKeyId"], CREDS["SecretAccessKey"], CREDS["Token"])
    request = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        auth_class(credentials, service, "us-east-1").add_auth(request)
    return request.headers["Authorization"]


def test_s3_get_is_signed_as_botocore_signs_it() -> None:
    url = "https://sdxl-source-1a2b.s3.us-east-1.amazonaws.com/bundles/0123abcd.tar"
    ours = sdxl_cloud.sigv4("GET", url, "us-east-1", "s3", b"", {}, CREDS, NOW)
    assert ours["authorization"] == botocore_authorization(botocore.auth.S3SigV4Auth, "s3", "GET", url, b"", {})
    assert ours["x-amz-security-token"] == "tok" and ours["x-amz-content-sha256"] == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")  # S3 requires it, empty body


def test_an_ssm_call_is_signed_as_botocore_signs_it() -> None:
    url, body = "https://ssm.us-east-1.amazonaws.com/", b'{"Name": "/sdxl-endpoint/dev/api-token"}'
    headers = {"content-type": "application/x-amz-json-1.1", "x-amz-target": "AmazonSSM.GetParameter"}
    ours = sdxl_cloud.sigv4("POST", url, "us-east-1", "ssm", body, headers, CREDS, NOW)
    theirs = botocore_authorization(botocore.auth.SigV4Auth, "ssm", "POST", url, body,
                                    {**headers, "X-Amz-Content-SHA256": ours["x-amz-content-sha256"]})
    assert ours["authorization"] == theirs
    # A different secret signs differently: the comparison above can fail.
    other = sdxl_cloud.sigv4("POST", url, "us-east-1", "ssm", body, headers, {**CREDS, "SecretAccessKey": "x"}, NOW)
    assert other["authorization"] != theirs


@pytest.mark.parametrize("service, target", [("ssm", "AmazonSSM.GetParameter"),
                                             ("ecr", "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken")])
def test_the_json_protocol_targets_are_the_service_models(service: str, target: str) -> None:
    model = botocore.session.get_session().get_service_model(service)
    prefix, operation = target.split(".")
    assert (model.metadata["protocol"], model.metadata["jsonVersion"]) == ("json", "1.1")
    assert model.metadata["targetPrefix"] == prefix and operation in model.operation_names


# --- the commands, against the stand-in ----------------------------------------------------------------------------

def test_fetch_from_s3_as_the_instance_role(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.objects["sdxl-source-1a2b/bundles/abc.tar"] = b"the bundle"
    result = helper(cloud, "fetch", "aws", "us-east-1", "sdxl-source-1a2b", "bundles/abc.tar", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b").read_bytes() == b"the bundle"
    imds, role, creds, s3 = cloud.requests
    assert (imds["method"], imds["path"]) == ("PUT", "/latest/api/token")  # IMDSv2: a session token first
    assert s3["headers"]["x-amz-security-token"] == fake_cloud.CREDENTIALS["Token"]


def test_fetch_from_cloud_storage_as_the_service_account(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.objects["sdxl-p-dev-source/bundles/abc.tar"] = b"the bundle"
    result = helper(cloud, "fetch", "gcp", "p", "sdxl-p-dev-source", "bundles/abc.tar", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b").read_bytes() == b"the bundle"
    assert cloud.requests[-1]["path"] == "/storage/v1/b/sdxl-p-dev-source/o/bundles%2Fabc.tar"


def test_a_failed_fetch_says_so_in_one_line_and_fails(cloud: FakeCloud, tmp_path: Path) -> None:
    result = helper(cloud, "fetch", "aws", "us-east-1", "bucket", "bundles/missing.tar", str(tmp_path / "b"))
    assert result.returncode == 1 and result.stderr.startswith("sdxl_cloud: fetch aws: HTTP Error 404")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("cloud_name, scope, refs", [
    ("aws", "us-east-1", {"SDXL_API_TOKEN": "/sdxl-endpoint/dev/api-token", "HF_TOKEN": "/sdxl-endpoint/dev/hf-token"}),
    ("gcp", "p", {"SDXL_API_TOKEN": "sdxl-dev-api-token", "HF_TOKEN": "sdxl-dev-hf-token"}),
])
def test_env_file_is_the_settings_plus_the_tokens_root_only(cloud: FakeCloud, tmp_path: Path, cloud_name: str,
                                                           scope: str, refs: dict[str, str]) -> None:
    values = {"SDXL_API_TOKEN": "the-api-token", "HF_TOKEN": "hf_the_hub_token"}
    for variable, name in refs.items():
        if cloud_name == "aws":
            cloud.parameters[name] = values[variable]
        else:
            cloud.secrets[f"projects/{scope}/secrets/{name}"] = values[variable]
    base = tmp_path / "settings.env"
    base.write_text("SDXL_MODEL=tiny\nSDXL_PORT=8000\n")
    out = tmp_path / "run" / "server.env"
    result = helper(cloud, "env-file", str(base), str(out), cloud_name, scope, *(f"{v}={n}" for v, n in refs.items()))
    assert result.returncode == 0, result.stderr
    assert out.read_text() == ("SDXL_MODEL=tiny\nSDXL_PORT=8000\nSDXL_API_TOKEN=the-api-token\n"
                               "HF_TOKEN=hf_the_hub_token\n")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    assert "the-api-token" not in result.stdout + result.stderr


def test_a_rotated_token_is_read_at_the_next_start(cloud: FakeCloud, tmp_path: Path) -> None:
    base, out = tmp_path / "settings.env", tmp_path / "server.env"
    base.write_text("SDXL_MODEL=tiny\n")
    for token in ("first-token", "rotated-token"):
        cloud.parameters["/p/s/api-token"] = token
        assert helper(cloud, "env-file", str(base), str(out), "aws", "us-east-1",
                      "SDXL_API_TOKEN=/p/s/api-token").returncode == 0
        assert out.read_text().splitlines()[-1] == f"SDXL_API_TOKEN={token}"


@pytest.mark.parametrize("value", ["two\nlines", "carriage\rreturn", ""])
def test_a_token_that_would_smuggle_a_variable_is_not_written(cloud: FakeCloud, tmp_path: Path, value: str) -> None:
    cloud.parameters["/p/s/api-token"] = value
    base, out = tmp_path / "settings.env", tmp_path / "server.env"
    base.write_text("SDXL_MODEL=tiny\n")
    result = helper(cloud, "env-file", str(base), str(out), "aws", "us-east-1", "SDXL_API_TOKEN=/p/s/api-token")
    assert result.returncode != 0 and "empty or holds a line break" in result.stderr
    assert not out.exists()


def test_a_missing_secret_leaves_no_file(cloud: FakeCloud, tmp_path: Path) -> None:
    base, out = tmp_path / "settings.env", tmp_path / "server.env"
    base.write_text("SDXL_MODEL=tiny\n")
    result = helper(cloud, "env-file", str(base), str(out), "gcp", "p", "SDXL_API_TOKEN=absent")
    assert result.returncode == 1 and "HTTP Error 404" in result.stderr and not out.exists()


def test_registry_passwords_for_ecr_and_artifact_registry(cloud: FakeCloud) -> None:
    ecr = helper(cloud, "registry-password", "aws", "123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    assert (ecr.returncode, ecr.stdout) == (0, fake_cloud.ECR_PASSWORD)
    assert cloud.requests[-1]["host"] == "api.ecr.eu-west-1.amazonaws.com"  # the registry's own region
    gcp = helper(cloud, "registry-password", "gcp", "us-central1-docker.pkg.dev")
    assert (gcp.returncode, gcp.stdout) == (0, fake_cloud.GCP_TOKEN)


def test_usage() -> None:
    result = subprocess.run([sys.executable, str(HELPER), "bogus"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "sdxl_cloud.py fetch" in result.stderr
