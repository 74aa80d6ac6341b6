"""Pulumi entry point: validated config -> the cloud's GPU endpoint component -> stack outputs."""

import pulumi

from stacks import config
from stacks.aws import describe_instance_type
from stacks.endpoint import create_endpoint

settings = config.load(lookup_aws_type=describe_instance_type)
endpoint = create_endpoint(settings)
for name, value in endpoint.outputs.items():
    pulumi.export(name, value)
