"""Pulumi entry point: validated config -> the configured target's component -> stack outputs.

Each target is one module of stacks/ with the same shape: an `Endpoint` ComponentResource that takes
the validated Settings and exposes `outputs` (stacks/contract.py), and `describe_machine`, the
preview-time look-up config validation may use (None where the catalog is enough).
"""

import importlib

import pulumi

from stacks import config

# `cloud` -> the module that builds it. Only the chosen one is imported.
TARGETS = {
    "aws": "stacks.aws",
    "gcp": "stacks.gcp",
    "huggingface": "stacks.huggingface",
    "runpod": "stacks.runpod",
}

# An unknown cloud is reported by config.load() with the others; evaluate it against the default target.
target = importlib.import_module(TARGETS.get(config.configured_cloud(), TARGETS["aws"]))
settings = config.load(describe_machine=target.describe_machine)
endpoint = target.Endpoint("sdxl", settings)
for name, value in endpoint.outputs.items():
    pulumi.export(name, value)
