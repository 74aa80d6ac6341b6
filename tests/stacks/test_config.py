"""Config is read in one place, defaults match Pulumi.yaml, and every mistake is reported at once."""

import re

import pytest
import yaml

from stacks import catalog, config
from tests.stacks.conftest import ROOT, ec2_instance_types, run_program


def config_error(settings: dict) -> str:
    with pytest.raises(config.ConfigError) as raised:
        run_program(settings)
    return str(raised.value)


def test_pulumi_yaml_declares_every_key_with_type_default_and_description():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == config.PROJECT
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}
    assert project["stackConfigDir"] == "stacks"
    declared = project["config"]
    assert set(declared) == set(config.KNOWN_KEYS)
    for key, spec in declared.items():
        assert spec["type"] in ("string", "integer", "boolean", "array"), key
        assert "default" in spec, f"{key} has no default, so the CLI would require it in every stack"
        assert len(spec["description"]) > 20, key
        assert not spec.get("secret"), "a secret with a default fails the CLI's validation"


def test_pulumi_yaml_defaults_match_the_config_module():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert declared["diskGb"]["default"] == config.DEFAULT_DISK_GB == 0  # 0: the GPU image's own root size
    assert declared["dataDiskGb"]["default"] == config.DEFAULT_DATA_DISK_GB
    assert declared["idleStopMinutes"]["default"] == config.DEFAULT_IDLE_STOP_MINUTES
    assert declared["model"]["default"] == config.DEFAULT_MODEL
    assert declared["image"]["default"] == ""  # unset: each target decides (stacks/config.py)
    assert declared["minReplicas"]["default"] == 1 and declared["maxReplicas"]["default"] == 1
    # The CLI applies these defaults; a run that sees them must equal one that sees nothing.
    applied = {k: spec["default"] for k, spec in declared.items()}
    with_defaults = run_program(applied).namespace["settings"]
    bare = run_program({}).namespace["settings"]
    assert with_defaults == bare


def test_defaults():
    settings = run_program({}).namespace["settings"]
    assert settings.cloud == "aws"
    assert settings.machine.name == "g5.xlarge"
    assert settings.disk_gb is None and settings.data_disk_gb == 100 and settings.idle_stop_minutes == 30
    assert settings.cors_origins == ("*",) and settings.allowed_cidrs == ("0.0.0.0/0",)
    assert settings.api_token is None and settings.hf_token is None
    assert settings.region == "us-east-1" and not settings.spot and not settings.ssh


def test_settings_are_immutable():
    settings = run_program({}).namespace["settings"]
    with pytest.raises(AttributeError):
        settings.disk_gb = 10


def test_all_bad_keys_are_reported_at_once():
    message = config_error({
        "cloud": "azure", "diskGb": "20", "allowedCidrs": ["10.0.0.5/24", "bogus"],
        "corsOrigins": ["https://app.example.com/", "https://app.example.com/path"],
        "idleStopMinutes": "-5", "gpu": "a10", "diskGB": "200",
    })
    assert "has 9 problems" in message
    expectations = [
        r"diskGB: unknown key.*\n.*fix: pulumi config mv diskGB diskGb",
        r"cloud = 'azure': not supported. Allowed: aws, gcp, huggingface, runpod, kubernetes\n"
        r".*fix: pulumi config set cloud aws",
        r"gpu = 'a10': unknown GPU. Allowed: t4, a10g, l4, l40s, a100, h100\n.*fix: pulumi config set gpu a10g",
        r"diskGb = '20': must be a whole number of GB from 60.*or 0.*\n.*fix: pulumi config rm diskGb",
        r"idleStopMinutes = '-5': .*0 or more.*\n.*fix: pulumi config set idleStopMinutes 30",
        r"corsOrigins = 'https://app.example.com/': .*no trailing slash\n.*fix: use https://app.example.com",
        r"corsOrigins = 'https://app.example.com/path': .*no path.*\n.*fix: use https://app.example.com",
        r"allowedCidrs = '10.0.0.5/24': host bits are set.*\n.*fix: use 10.0.0.0/24",
        r"allowedCidrs = 'bogus': not a CIDR.*\n.*fix: use 203.0.113.0/24",
    ]
    for pattern in expectations:
        assert re.search(pattern, message), pattern


@pytest.mark.parametrize("settings, pattern", [
    ({"spot": "yes"}, r"spot = 'yes': must be true or false"),
    ({"diskGb": "lots"}, r"diskGb = 'lots'"),
    ({"diskGb": "20000"}, r"diskGb = '20000'"),
    ({"dataDiskGb": "20"}, r"dataDiskGb = '20': must be a whole number of GB from 50.*\n.*fix: pulumi config set "
                           r"dataDiskGb 100"),
    ({"allowedCidrs": "[]"}, r"allowedCidrs = '\[\]': must be a non-empty list"),
    ({"corsOrigins": ["app.example.com"]}, r"fix: use https://app.example.com"),
    ({"domain": "https://sdxl.example.com/"}, r"fix: pulumi config set domain sdxl.example.com"),
    ({"model": "not a hub id"}, r"model = 'not a hub id': must be a Hugging Face Hub id"),
    ({"ttl": "tomorrow"}, r"ttl = 'tomorrow': must be an RFC 3339 time"),
    ({"minReplicas": "3", "maxReplicas": "2"},
     r"minReplicas = 3: is above maxReplicas \(2\)\n.*fix: pulumi config set maxReplicas 3"),
    ({"maxReplicas": "0"}, r"maxReplicas = '0': must be a whole number from 1 to 64"),
    ({"maxReplicas": "many"}, r"maxReplicas = 'many'"),
    ({"ttl": "2030-01-01T00:00:00"}, r"ttl = .*RFC 3339 time with a zone"),
    ({"aws:region": "useast1"}, r"aws:region = 'useast1': not an AWS region"),
    ({"machineType": "n1-standard-4"}, r"machineType = 'n1-standard-4': applies to GCP.*\n.*pulumi config mv"),
    ({"gpu": "t4", "instanceType": "g5.xlarge"}, r"has a A10G GPU but gpu is set to 't4'"),
    ({"instanceType": "not_a_type"}, r"not an EC2 instance type name"),
    ({"cloud": "gcp", "gpu": "a10g", "gcp:project": "p"},
     r"gpu = 'a10g': not offered on GCP. Allowed there: a100, h100, l4, t4\n.*fix: pulumi config set gpu l4"),
    ({"cloud": "gcp"}, r"gcp:project: required when cloud is gcp"),
])
def test_each_mistake_has_a_message_and_a_fix(settings, pattern):
    message = config_error(settings)
    assert re.search(pattern, message), message
    assert "fix:" in message


def test_tokens_set_without_secret_are_refused():
    with pytest.raises(config.ConfigError) as raised:
        run_program({"apiToken": "plain-token-1234", "hfToken": "hf_plain"}, secret_keys=())
    message = str(raised.value)
    assert "has 2 problems" in message
    assert "apiToken: is stored in plain text" in message and "pulumi config set --secret apiToken" in message
    assert "hfToken: is stored in plain text" in message
    assert "plain-token-1234" not in message and "hf_plain" not in message


def test_valid_values_are_accepted():
    settings = run_program({
        "corsOrigins": ["https://app.example.com", "http://localhost:5173"],
        "allowedCidrs": ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"], "domain": "sdxl.example.com",
        "ttl": "2030-01-31T18:00:00Z", "idleStopMinutes": "0", "diskGb": "60", "spot": "true", "dataDiskGb": "250",
    }).namespace["settings"]
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:5173")
    assert settings.allowed_cidrs == ("203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32")
    assert settings.tags["sdxl-endpoint:ttl"] == "2030-01-31T18:00:00Z"
    assert settings.idle_stop_minutes == 0 and settings.disk_gb == 60 and settings.spot
    assert settings.data_disk_gb == 250


def test_comma_separated_lists_are_accepted_from_the_cli():
    settings = run_program({"corsOrigins": "https://a.example.com, https://b.example.com"}).namespace["settings"]
    assert settings.cors_origins == ("https://a.example.com", "https://b.example.com")


def test_empty_strings_from_pulumi_yaml_defaults_mean_unset():
    settings = run_program({"gpu": "", "instanceType": "", "apiToken": "", "domain": ""}).namespace["settings"]
    assert settings.machine.name == "g5.xlarge" and settings.api_token is None and settings.domain is None


def test_config_is_read_only_in_the_config_module():
    offenders = [
        path.relative_to(ROOT) for path in [ROOT / "__main__.py", *ROOT.glob("stacks/*.py")]
        if path.name != "config.py" and "pulumi.Config(" in path.read_text()
    ]
    assert offenders == []


def test_validate_is_a_pure_function_of_plain_values():
    # No Pulumi runtime is set up here: the doctor calls validate() the same way.
    settings = config.validate({"sdxl-endpoint:gpu": "t4", "aws:region": "us-west-2",
                                "sdxl-endpoint:corsOrigins": '["https://app.example.com"]'}, stack="plain")
    assert settings.machine.name == "g4dn.xlarge" and settings.region == "us-west-2"
    assert settings.cors_origins == ("https://app.example.com",) and settings.stack == "plain"
    assert settings.tags == {"sdxl-endpoint:stack": "plain", "sdxl-endpoint:project": "sdxl-endpoint"}
    with pytest.raises(config.ConfigError, match=r"Stack 'plain' has 1 problem .*\n  - gpu = 'x100'"):
        config.validate({"sdxl-endpoint:gpu": "x100"}, stack="plain")
    # YAML values (as a stack file holds them) are accepted as well as the engine's strings.
    typed = config.validate({"sdxl-endpoint:spot": True, "sdxl-endpoint:diskGb": 200,
                             "sdxl-endpoint:allowedCidrs": ["203.0.113.0/24"]}, stack="plain")
    assert typed.spot and typed.disk_gb == 200 and typed.allowed_cidrs == ("203.0.113.0/24",)


def test_the_config_module_imports_pulumi_only_in_its_loader():
    import ast

    tree = ast.parse((ROOT / "stacks" / "config.py").read_text())
    top_level = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert not {name for name in top_level if name.split(".")[0] == "pulumi"}
    assert "CONFIG" not in (ROOT / "stacks" / "config.py").read_text()  # Pulumi's private config map


def test_a_refusal_is_data_rendered_once():
    with pytest.raises(config.ConfigError) as raised:
        config.validate({"sdxl-endpoint:instanceType": "c5.xlarge"}, stack="plain",
                        describe_machine=lambda name, region: catalog.instance_facts(ec2_instance_types()[name]))
    message = str(raised.value)
    # Rendered from catalog.Refusal: the headline, the alternatives, then one fix line.
    assert re.search(r"- instanceType 'c5.xlarge' cannot run SDXL: it is CPU-only; .*\.\n"
                     r"    Nearest types that fit:\n(      - .*\n){3}"
                     r"      fix: pulumi config set instanceType ", message)
    assert "Fix:" not in message
