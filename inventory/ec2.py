"""Read running EC2 instances into a Fleet, in an order that does not change between runs.

Instances are chosen by tags and instance type; each host is named by its instance id, reached
at its private address (or its public one), with the user and key the caller gives (EC2 does
not know them), and labelled with its region, zone and instance type.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from pydantic import TypeAdapter, ValidationError

from inventory.errors import ConfigError, config_error
from inventory.loader import key_file_problem
from inventory.models import Fleet, UserName
from inventory.sources import build_fleet

SOURCE = "ec2"
PAGE_SIZE = 200
_DENIED = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}
REGION = re.compile(r"[a-z0-9]+(-[a-z0-9]+){1,4}")
INSTANCE_TYPE = re.compile(r"[a-z0-9][a-z0-9.-]{0,39}")
TAG_KEY = re.compile(r"[^\x00-\x1f]{1,128}")
_AWS_FORMATS = {
    "AWS_MAX_ATTEMPTS": (re.compile(r"[1-9][0-9]{0,2}"), "a number of attempts, 1 to 999"),
    "AWS_RETRY_MODE": (re.compile(r"legacy|standard|adaptive"), "legacy, standard or adaptive"),
    "AWS_DEFAULT_REGION": (REGION, "a region such as us-east-1"),
    "AWS_REGION": (REGION, "a region such as us-east-1"),
}
_AWS_URLS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2")
_AWS_FILES = {
    "AWS_CONFIG_FILE": "~/.aws/config",
    "AWS_SHARED_CREDENTIALS_FILE": "~/.aws/credentials",
}
ENVIRONMENT = "environment"


def check_aws_environment() -> None:
    """The AWS_* variables the EC2 client reads first, checked before it is made (its own
    errors name no variable): ConfigError naming the variable."""
    for variable, (pattern, meaning) in _AWS_FORMATS.items():
        value = os.environ.get(variable)
        if value is not None and not pattern.fullmatch(value):
            raise ConfigError(ENVIRONMENT, variable, f"{value!r} is not {meaning}")
    for variable in _AWS_URLS:
        value = os.environ.get(variable)
        if value is None:
            continue
        try:
            url = urlsplit(value)
            url.port  # noqa: B018 (parsing it is the check)
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(ENVIRONMENT, variable, f"{value!r} is not an http(s) URL")
    for variable, default in _AWS_FILES.items():
        path = os.path.expanduser(os.environ.get(variable, default))
        if os.path.lexists(path) and not os.path.isfile(path):  # a FIFO would hang the client
            raise ConfigError(ENVIRONMENT, variable, f"{path} is not a file")


def check_options(query: Ec2Query, user: str, key_file: Path | None) -> None:
    """Refuse a bad option before anything is asked of AWS."""
    try:
        TypeAdapter(UserName).validate_python(user)
    except ValidationError as error:
        raise config_error(error, None, rename=lambda loc: "--user") from None
    for option, value, pattern in (
        ("--region", query.region, REGION),
        ("--type", query.instance_type, INSTANCE_TYPE),
        ("--order-tag", query.order_tag, TAG_KEY),
    ):
        if value is not None and not pattern.fullmatch(value):
            raise ConfigError(None, option, f"{value!r} is not a valid {option[2:]}")
    problem = key_file is not None and key_file_problem(key_file.expanduser())
    if problem:
        raise ConfigError(None, "--key-file", f"{key_file} {problem}")


@dataclass(frozen=True)
class Ec2Query:
    """Which instances: every `tags` pair must match, and the type if given."""

    tags: dict[str, str] = field(default_factory=dict)
    instance_type: str | None = None
    region: str | None = None
    public: bool = False
    order_tag: str | None = None


def parse_tags(texts: list[str]) -> dict[str, str]:
    """`Key=Value` options as a dict; a text without `=` or a key is a ConfigError."""
    tags = {}
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise ConfigError(None, "--tag", f"{text!r} is not Key=Value")
        tags[key] = value
    return tags


def running_instances(client: Any, query: Ec2Query, page_size: int = PAGE_SIZE) -> list[dict]:
    """Every running instance the query matches, page after page."""
    filters = [{"Name": "instance-state-name", "Values": ["running"]}]
    filters += [{"Name": f"tag:{key}", "Values": [value]} for key, value in query.tags.items()]
    if query.instance_type:
        filters.append({"Name": "instance-type", "Values": [query.instance_type]})
    pages = client.get_paginator("describe_instances").paginate(
        Filters=filters, PaginationConfig={"PageSize": page_size}
    )
    return [
        instance
        for page in pages
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]


def _order_key(instance: dict, order_tag: str | None) -> tuple:
    """Ranked by the order tag (numbers before words) if given, then launch time, launch
    index and instance id."""
    rank: tuple = ()
    if order_tag is not None:
        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        if order_tag not in tags:
            where = f"{instance['InstanceId']}.tag:{order_tag}"
            raise ConfigError(SOURCE, where, "missing (every instance needs the order tag)")
        value = tags[order_tag]
        rank = (0, int(value), "") if value.isdigit() else (1, 0, value)
    return (*rank, instance["LaunchTime"], instance["AmiLaunchIndex"], instance["InstanceId"])


def _described(query: Ec2Query, page_size: int) -> tuple[list[dict], str]:
    """The matching instances and the region asked, with AWS's refusals as ConfigErrors."""
    try:
        client = boto3.client("ec2", region_name=query.region)
        return running_instances(client, query, page_size), client.meta.region_name
    except NoCredentialsError:
        raise ConfigError(
            SOURCE, "credentials", "none found (environment, ~/.aws/credentials or a role)"
        ) from None
    except NoRegionError:
        raise ConfigError(SOURCE, "--region", "no region given (nor AWS_DEFAULT_REGION)") from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        if code in _DENIED:
            message = f"not allowed to describe instances ({code})"
            raise ConfigError(SOURCE, "permissions", message) from None
        raise ConfigError(SOURCE, code, str(error)) from None
    except BotoCoreError as error:
        raise ConfigError(SOURCE, None, str(error)) from None
    except ValueError as error:  # botocore's word on a setting it read (a file, a variable)
        raise ConfigError(SOURCE, None, f"an AWS setting is not valid: {error}") from None


def load_ec2(
    query: Ec2Query,
    user: str = "root",
    key_file: Path | None = None,
    name: str = SOURCE,
    page_size: int = PAGE_SIZE,
) -> Fleet:
    """The running instances of `query` as a Fleet, in a stable order."""
    check_options(query, user, key_file)
    check_aws_environment()
    instances, region = _described(query, page_size)
    if not instances:
        raise ConfigError(SOURCE, "instances", "no running instance matches the filters")
    which = "PublicIpAddress" if query.public else "PrivateIpAddress"
    hosts = []
    for instance in sorted(instances, key=lambda i: _order_key(i, query.order_tag)):
        instance_id = instance["InstanceId"]
        if not instance.get(which):
            raise ConfigError(SOURCE, f"{instance_id}.{which}", "the instance has none")
        labels = {
            "region": region,
            "zone": instance["Placement"]["AvailabilityZone"],
            "instance_type": instance["InstanceType"],
        }
        fields = {"name": instance_id, "address": instance[which], "user": user, "labels": labels}
        if key_file is not None:
            fields["key_file"] = key_file.expanduser().absolute()
        hosts.append((instance_id, fields))
    return build_fleet(SOURCE, hosts, {"address": which}, name=name)
