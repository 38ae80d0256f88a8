"""EC2 as an inventory source, against moto's EC2: running instances by tags and type, every
page, a stable order, and one line with exit code 2 for missing credentials or permissions."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber
from clirun import run_cli
from moto import mock_aws

from inventory.ec2 import Ec2Query, load_ec2, running_instances
from inventory.loader import load_inventory

REGION = "us-east-1"
IMAGE = "ami-12345678"  # moto runs any image id; reading its catalogue of images takes seconds


@pytest.fixture
def ec2(monkeypatch):
    """A client of a mocked EC2, with credentials that only moto accepts."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION,
                        "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def launch(ec2, count: int, instance_type: str = "p3.2xlarge", **tags: str) -> list[str]:
    """Start `count` instances with `tags`; their ids in launch-index order."""
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    reply = ec2.run_instances(ImageId=IMAGE, MinCount=count, MaxCount=count,
                              InstanceType=instance_type, TagSpecifications=spec)  # fmt: skip
    return [i["InstanceId"] for i in sorted(reply["Instances"], key=lambda i: i["AmiLaunchIndex"])]


def test_running_instances_by_tag_and_type_in_launch_order(ec2):
    wanted = launch(ec2, 3, Project="wanlab")
    stopped = launch(ec2, 1, Project="wanlab")
    ec2.stop_instances(InstanceIds=stopped)
    launch(ec2, 2, "t3.micro", Project="wanlab")
    launch(ec2, 2, Project="other")
    query = Ec2Query(tags={"Project": "wanlab"}, instance_type="p3.2xlarge")
    fleet = load_ec2(query, user="ubuntu")
    assert fleet.names == wanted
    host = fleet.hosts[0]
    assert host.user == "ubuntu" and host.address.startswith("10.")
    assert host.labels == {"region": REGION, "zone": "us-east-1a", "instance_type": "p3.2xlarge"}
    public = load_ec2(Ec2Query(tags={"Project": "wanlab"}, public=True), user="ubuntu")
    assert len(public.hosts) == 5 and not public.hosts[0].address.startswith("10.")


def test_every_page_is_read_and_the_order_is_stable(ec2):
    """Instances launched one by one: by launch time, then (launched in one second) by id."""
    ids = [launch(ec2, 1, Project="wanlab")[0] for _ in range(7)]  # a page holds reservations
    calls = []
    ec2.meta.events.register("before-call.ec2.DescribeInstances", lambda **_: calls.append(1))
    assert len(running_instances(ec2, Ec2Query(), page_size=5)) == 7 and len(calls) == 2
    first = load_ec2(Ec2Query(tags={"Project": "wanlab"}), page_size=5)
    again = load_ec2(Ec2Query(tags={"Project": "wanlab"}), page_size=5)
    launched = {i["InstanceId"]: i["LaunchTime"] for i in running_instances(ec2, Ec2Query())}
    assert first.names == again.names == sorted(ids, key=lambda i: (launched[i], i))


def test_order_tag_ranks_numbers_as_numbers(ec2):
    ids = [launch(ec2, 1, Project="wanlab", Rank=str(rank))[0] for rank in (10, 9, 1)]
    fleet = load_ec2(Ec2Query(tags={"Project": "wanlab"}, order_tag="Rank"))
    assert fleet.names == ids[::-1]


def test_cli_writes_the_fleet(ec2, monkeypatch, capsys, tmp_path):
    ids = launch(ec2, 2, Project="wanlab")
    (tmp_path / "id").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    out = tmp_path / "fleet.toml"
    code, _, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "--from", "ec2", "--tag",
                              "Project=wanlab", "--type", "p3.2xlarge", "--user", "ubuntu",
                              "--key-file", str(tmp_path / "id"), "--write", str(out))  # fmt: skip
    assert code == 0, stderr
    fleet = load_inventory(out)
    assert fleet.names == ids and fleet.hosts[0].key_file == tmp_path / "id"


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_no_credentials_is_one_line(monkeypatch, capsys, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, stdout, stderr = run_cli(
        monkeypatch, capsys, "inventory", "show", "--from", "ec2", "--region", REGION
    )
    assert code == 2 and stdout == ""
    assert one_line(stderr).startswith("wanlab: error: ec2: credentials: none found")


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "AccessDenied"])
def test_no_permission_is_one_line(ec2, monkeypatch, capsys, code):
    stubber = Stubber(ec2)
    stubber.add_client_error("describe_instances", service_error_code=code, http_status_code=403)
    monkeypatch.setattr(boto3, "client", lambda *_a, **_k: ec2)
    with stubber:
        status, _, stderr = run_cli(monkeypatch, capsys, "inventory", "show", "--from", "ec2")
    assert status == 2
    assert one_line(stderr) == (
        f"wanlab: error: ec2: permissions: not allowed to describe instances ({code})"
    )
