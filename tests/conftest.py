"""Suite-wide guards: nothing in the tests may reach a cloud metadata service or the Hub."""

import os

# Set before any SDK is imported, so that boto3, google-auth and huggingface_hub
# never probe 169.254.169.254 or the network when they find no credentials.
for _name, _value in {
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_GCE_CHECK": "True",
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_IP": "127.0.0.1:9",
    "HF_HUB_OFFLINE": "1",
    "PULUMI_SKIP_UPDATE_CHECK": "true",
}.items():
    os.environ.setdefault(_name, _value)
