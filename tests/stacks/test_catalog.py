"""The GPU catalog: its numbers match EC2's own catalog, resolution picks the smallest fit,
and every class of unfit type is refused with a reason and fitting alternatives."""

import pytest

from stacks import catalog
from tests.stacks.conftest import ec2_instance_types, get_instance_type_result


def facts_from_ec2(instance_type: str) -> catalog.InstanceFacts:
    """What stacks/aws.py builds from aws.ec2.get_instance_type, from moto's real EC2 data."""
    return catalog.instance_facts(get_instance_type_result(instance_type), "pulumi")


@pytest.mark.parametrize("name", sorted(catalog.AWS_OFFERS))
def test_aws_offers_match_ec2s_own_catalog(name):
    offer = catalog.AWS_OFFERS[name]
    record = ec2_instance_types()[name]
    gpu = record["GpuInfo"]["Gpus"][0]
    assert offer.vcpus == record["VCpuInfo"]["DefaultVCpus"]
    assert offer.ram_gib == record["MemoryInfo"]["SizeInMiB"] / 1024
    assert offer.gpu_count == gpu["Count"]
    assert offer.gpu.model == gpu["Name"]
    assert gpu["Manufacturer"] == "NVIDIA"
    # EC2 reports marketing sizes in MiB a little under the GB figure (A10G: 22888 MiB for 24 GB).
    assert abs(gpu["MemoryInfo"]["SizeInMiB"] / 1024 - offer.gpu.memory_gb) / offer.gpu.memory_gb < 0.1
    assert catalog.why_unfit(facts_from_ec2(name)) is None


def test_every_offer_has_a_price_and_the_source_is_recorded():
    for offer in (*catalog.AWS_OFFERS.values(), *catalog.GCP_OFFERS.values()):
        assert offer.usd_per_hour and 0.1 < offer.usd_per_hour < 100, offer
    assert catalog.PRICES_SOURCE and catalog.PRICES_AS_OF


def test_floor_is_one_named_constant():
    assert catalog.SDXL_MIN_GPU_MEMORY_GB == 16
    t4 = catalog.InstanceFacts("x.t4", 4, gpus=(catalog.GpuFacts("NVIDIA", "T4", 1, 16 * 1024),))
    just_under = catalog.InstanceFacts("x.small", 4, gpus=(catalog.GpuFacts("NVIDIA", "X", 1, 16 * 1024 - 1),))
    assert catalog.why_unfit(t4) is None
    assert "below the 16 GB" in catalog.why_unfit(just_under)


@pytest.mark.parametrize("gpu, aws_type, gcp_type", [
    ("t4", "g4dn.xlarge", "n1-standard-4"),
    ("a10g", "g5.xlarge", None),
    ("l4", "g6.xlarge", "g2-standard-4"),
    ("l40s", "g6e.xlarge", None),
    ("h100", "p5.4xlarge", "a3-highgpu-1g"),
    ("a100", None, "a2-highgpu-1g"),
])
def test_gpu_resolves_to_the_smallest_fitting_type(gpu, aws_type, gcp_type):
    for cloud, expected in (("aws", aws_type), ("gcp", gcp_type)):
        if expected is None:
            with pytest.raises(catalog.UnfitMachineError, match="not offered"):
                catalog.smallest_offer(cloud, gpu)
        else:
            assert catalog.smallest_offer(cloud, gpu).name == expected


@pytest.mark.parametrize("instance_type, reason", [
    ("c5.xlarge", "CPU-only"),
    ("m6i.large", "CPU-only"),
    ("t3.medium", "CPU-only"),
    ("r7i.large", "CPU-only"),
    ("inf1.xlarge", "Inferentia"),
    ("inf2.xlarge", "Inferentia2"),
    ("trn1.2xlarge", "Trainium"),
    ("g5g.xlarge", "Arm"),
    ("c7g.large", "Arm"),
    ("g6f.large", "below the 16 GB"),
])
def test_unfit_types_from_ec2_data_are_refused_with_alternatives(instance_type, reason):
    with pytest.raises(catalog.UnfitMachineError) as refused:
        catalog.judge_aws_type(facts_from_ec2(instance_type))
    message = str(refused.value)
    assert f"'{instance_type}' cannot run SDXL" in message
    assert reason in message
    alternatives = [line for line in message.splitlines() if line.startswith("  - ")]
    assert 2 <= len(alternatives) <= 3
    for line in alternatives:
        name = line.split()[1]
        offer = catalog.AWS_OFFERS[name]
        assert offer.gpu.model in line and f"{offer.gpu.memory_gb} GB" in line and "$" in line


@pytest.mark.parametrize("instance_type, reason", [
    ("g4ad.xlarge", "AMD Radeon Pro V520, not NVIDIA"),
    ("p2.xlarge", "K80 has 12 GB per GPU"),
    ("g3.4xlarge", "M60 has 8 GB per GPU"),
    ("g3s.xlarge", "M60"),
    ("dl1.24xlarge", "Habana Gaudi"),
])
def test_retired_unfit_families_are_refused_without_a_lookup(instance_type, reason):
    facts = catalog.retired_aws_facts(instance_type)
    assert facts is not None
    with pytest.raises(catalog.UnfitMachineError, match=reason):
        catalog.judge_aws_type(facts)


def test_alternatives_are_near_in_size():
    big = catalog.nearest_offers(catalog.AWS_OFFERS, vcpus=64)
    assert {o.vcpus for o in big} == {64}
    small = catalog.nearest_offers(catalog.AWS_OFFERS, vcpus=2)
    assert [o.name for o in small] == ["g4dn.xlarge", "g6.xlarge", "g5.xlarge"]


def test_uncatalogued_nvidia_type_is_accepted_from_provider_data():
    # p3dn.24xlarge (V100 32 GB) isn't in the catalog; EC2's data says it fits.
    facts = facts_from_ec2("p3dn.24xlarge")
    catalog.judge_aws_type(facts)
    offer = catalog.offer_from_aws_facts(facts)
    assert (offer.gpu.model, offer.gpu.memory_gb, offer.gpu_count) == ("V100", 32, 8)
    assert offer.usd_per_hour is None and "price not in catalog" in offer.describe()


@pytest.mark.parametrize("machine_type, gpu, reason", [
    ("n2-standard-4", "t4", "T4 attaches only to N1"),
    ("e2-standard-4", "t4", "T4 attaches only to N1"),
    ("c2-standard-4", "t4", "T4 attaches only to N1"),
    ("g2-standard-4", "t4", "L4 built in"),
    ("e2-standard-4", None, "no GPU"),
    ("n2-standard-8", None, "no GPU"),
    ("c3-standard-4", None, "no GPU"),
    ("n1-standard-2", None, "n1-standard-4, -8 or -16"),
])
def test_gcp_placement_rules(machine_type, gpu, reason):
    with pytest.raises(catalog.UnfitMachineError) as refused:
        catalog.resolve_gcp(machine_type, gpu)
    message = str(refused.value)
    assert reason in message
    alternatives = [line for line in message.splitlines() if line.startswith("  - ")]
    assert 2 <= len(alternatives) <= 3
    assert all(catalog.GCP_OFFERS[line.split()[1]].gpu.model in line and "$" in line for line in alternatives)


def test_gcp_fitting_shapes():
    assert catalog.resolve_gcp("n1-standard-4", "t4").accelerator == "nvidia-tesla-t4"
    assert catalog.resolve_gcp("g2-standard-8", None).accelerator is None
    assert catalog.resolve_gcp("g2-standard-4", "l4").gpu.key == "l4"
