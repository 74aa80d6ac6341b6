"""`make wake` on a fleet (maxReplicas above 1) or a Kubernetes stack: there is nothing to wake, and wake says so
before touching a cloud."""

from __future__ import annotations

import pytest

from tests.tools.test_wake import TOKEN, deployed
from tools import wake


@pytest.mark.parametrize("outputs, stack_config", [
    ({"fleet": "sdxl-endpoint-aws-g5-fleet", "maxReplicas": 4, "instanceId": "sdxl-endpoint-aws-g5-fleet"}, {}),
    ({"instanceId": "i-0123456789abcdef0"}, {"sdxl-endpoint:maxReplicas": "3"}),  # outputs of an older deploy
])
def test_a_fleet_is_refused_with_what_it_does_instead(backend, capsys, monkeypatch, outputs, stack_config) -> None:
    deployed(backend, "aws-g5-fleet", {"endpoint": "https://d111111abcdef8.cloudfront.net", "apiToken": TOKEN,
                                       "region": "us-east-1", "availabilityZone": "us-east-1a,us-east-1b", **outputs},
             {"sdxl-endpoint:cloud": "aws", **stack_config})
    started = []
    monkeypatch.setattr(wake, "start_aws", lambda target, ec2=None: started.append(target))
    assert wake.main(["--stack", "aws-g5-fleet"]) == 1
    err = capsys.readouterr().err
    assert "stack aws-g5-fleet is a fleet" in err and "wake does not apply" in err
    assert "minReplicas" in err and "https://d111111abcdef8.cloudfront.net" in err
    assert TOKEN not in err and started == []


def test_a_single_instance_with_the_default_replicas_is_still_woken(backend, monkeypatch) -> None:
    deployed(backend, "aws-g5", {"endpoint": "https://203.0.113.10", "apiToken": TOKEN, "instanceId": "i-0abc",
                                 "region": "us-east-1", "availabilityZone": "us-east-1a"},
             {"sdxl-endpoint:cloud": "aws", "sdxl-endpoint:maxReplicas": "1"})
    assert wake.read_target("aws-g5").instance == "i-0abc"


def test_a_kubernetes_stack_is_refused_with_where_to_look(backend, capsys) -> None:
    shell = "kubectl -n sdxl-k8s-gke-l4 logs -f deployment/sdxl-endpoint"
    deployed(backend, "k8s-gke-l4", {"endpoint": "https://sdxl.example.com", "apiToken": TOKEN, "shell": shell,
                                     "instanceId": "sdxl-k8s-gke-l4/deployment/sdxl-endpoint", "region": "ctx",
                                     "availabilityZone": ""}, {"sdxl-endpoint:cloud": "kubernetes"})
    assert wake.main(["--stack", "k8s-gke-l4"]) == 1
    err = capsys.readouterr().err
    assert "runs on Kubernetes: wake does not apply" in err and shell in err and TOKEN not in err
