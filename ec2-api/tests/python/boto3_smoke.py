"""Drives the EC2 façade with boto3 (SigV4). Run by tests/python.rs with
AWS_ENDPOINT_URL_EC2, keys and region in the environment; IMAGE_ID names a
seeded image. Exits non-zero on the first failed check."""
import os
import sys

import boto3
import botocore.exceptions

ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL_EC2"])
image_id = os.environ["IMAGE_ID"]


def expect_error(code, fn, **kw):
    try:
        fn(**kw)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"{fn.__name__}: expected {code}, got {got}: {e}"
        return e
    raise AssertionError(f"{fn.__name__}: expected {code}, it succeeded")


regions = ec2.describe_regions()["Regions"]
assert [r["RegionName"] for r in regions] == ["corral-1"], regions
zones = ec2.describe_availability_zones()["AvailabilityZones"]
assert zones[0]["ZoneName"] == "corral-1a" and zones[0]["State"] == "available", zones
attrs = {a["AttributeName"]: a for a in ec2.describe_account_attributes()["AccountAttributes"]}
assert attrs["default-vpc"]["AttributeValues"][0]["AttributeValue"].startswith("vpc-"), attrs

# Key pairs: the private key comes back once.
kp = ec2.create_key_pair(KeyName="my key", KeyType="ed25519")
assert kp["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----"), kp["KeyMaterial"][:40]
assert kp["KeyPairId"].startswith("key-")
rsa = ec2.create_key_pair(KeyName="rsa-key")
assert rsa["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
expect_error("InvalidKeyPair.Duplicate", ec2.create_key_pair, KeyName="my key")
pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ4uHWXmWgwN6MKFpsgnnGaU1rtTEBKPNu/L09gAucb me@host"
imp = ec2.import_key_pair(KeyName="imported", PublicKeyMaterial=pub.encode())
assert imp["KeyName"] == "imported" and imp["KeyFingerprint"]
names = sorted(k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"])
assert names == ["imported", "my key", "rsa-key"], names
only = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["my*"]}])["KeyPairs"]
assert [k["KeyName"] for k in only] == ["my key"], only
expect_error("InvalidKeyPair.NotFound", ec2.describe_key_pairs, KeyNames=["nope"])
expect_error("DryRunOperation", ec2.delete_key_pair, KeyName="rsa-key", DryRun=True)
ec2.delete_key_pair(KeyName="rsa-key")
expect_error("InvalidKeyPair.NotFound", ec2.describe_key_pairs, KeyNames=["rsa-key"])

# Security groups.
sg = ec2.create_security_group(GroupName="Web Servers", Description="web")["GroupId"]
ec2.authorize_security_group_ingress(
    GroupId=sg,
    IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh"}]},
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
    ],
)
expect_error(
    "InvalidPermission.Duplicate",
    ec2.authorize_security_group_ingress,
    GroupId=sg,
    IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
)
g = ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]
assert g["GroupName"] == "Web Servers", g
assert len(g["IpPermissions"]) == 2 and g["IpPermissions"][0]["IpRanges"][0]["Description"] == "ssh", g
assert g["IpPermissionsEgress"][0]["IpProtocol"] == "-1", g
by_port = ec2.describe_security_groups(Filters=[{"Name": "ip-permission.from-port", "Values": ["80"]}])
assert [x["GroupId"] for x in by_port["SecurityGroups"]] == [sg]

# Instances.
res = ec2.run_instances(
    ImageId=image_id, MinCount=2, MaxCount=2, InstanceType="m1.small", KeyName="my key",
    SecurityGroupIds=[sg], ClientToken="boto3-run-1",
    TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}]}],
    UserData="#!/bin/sh\necho hi\n",
)
ids = [i["InstanceId"] for i in res["Instances"]]
assert len(ids) == 2 and all(i["State"]["Name"] == "pending" for i in res["Instances"]), res
again = ec2.run_instances(ImageId=image_id, MinCount=2, MaxCount=2, InstanceType="m1.small", KeyName="my key",
    SecurityGroupIds=[sg], ClientToken="boto3-run-1",
    TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}]}],
    UserData="#!/bin/sh\necho hi\n")
assert [i["InstanceId"] for i in again["Instances"]] == ids, again
expect_error("IdempotentParameterMismatch", ec2.run_instances, ImageId=image_id, MinCount=1, MaxCount=1, ClientToken="boto3-run-1")
desc = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["web"]}])
found = sorted(i["InstanceId"] for r in desc["Reservations"] for i in r["Instances"])
assert found == sorted(ids), desc
inst = desc["Reservations"][0]["Instances"][0]
assert inst["KeyName"] == "my key" and inst["SecurityGroups"][0]["GroupId"] == sg, inst
ud = ec2.describe_instance_attribute(InstanceId=ids[0], Attribute="userData")
assert ud["UserData"]["Value"], ud
pager = ec2.get_paginator("describe_instances")
seen = [i["InstanceId"] for page in pager.paginate(PaginationConfig={"PageSize": 5}) for r in page["Reservations"] for i in r["Instances"]]
assert sorted(seen) == sorted(ids), seen
expect_error("InvalidInstanceID.NotFound", ec2.describe_instances, InstanceIds=["i-0123456789abcdef0"])
expect_error("InvalidInstanceID.Malformed", ec2.describe_instances, InstanceIds=["i-xyz"])
expect_error("InvalidParameterValue", ec2.describe_instances, Filters=[{"Name": "bogus", "Values": ["x"]}])
expect_error("IncorrectInstanceState", ec2.stop_instances, InstanceIds=[ids[0]])
t = ec2.terminate_instances(InstanceIds=ids)
assert all(c["CurrentState"]["Name"] in ("shutting-down", "terminated") for c in t["TerminatingInstances"]), t
gone = ec2.describe_instances(InstanceIds=ids)
assert all(i["State"]["Name"] == "terminated" for r in gone["Reservations"] for i in r["Instances"]), gone

# Types, tags.
types = ec2.describe_instance_types(InstanceTypes=["m1.small"])["InstanceTypes"]
assert types[0]["VCpuInfo"]["DefaultVCpus"] == 1 and types[0]["MemoryInfo"]["SizeInMiB"] == 2048, types
ec2.create_tags(Resources=[sg], Tags=[{"Key": "env", "Value": "prod"}])
tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [sg]}])["Tags"]
assert tags == [{"Key": "env", "ResourceId": sg, "ResourceType": "security-group", "Value": "prod"}], tags
ec2.delete_tags(Resources=[sg], Tags=[{"Key": "env"}])
assert ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [sg]}])["Tags"] == []

ec2.delete_security_group(GroupId=sg)
expect_error("InvalidGroup.NotFound", ec2.describe_security_groups, GroupIds=[sg])
# Elastic IPs (the pool is the project's Network "public").
eip = ec2.allocate_address(Domain="vpc")
assert eip["AllocationId"].startswith("eipalloc-") and eip["Domain"] == "vpc", eip
ec2.create_tags(Resources=[eip["AllocationId"]], Tags=[{"Key": "Name", "Value": "front"}])
got = ec2.describe_addresses(Filters=[{"Name": "tag:Name", "Values": ["front"]}])["Addresses"]
assert [a["PublicIp"] for a in got] == [eip["PublicIp"]], got
expect_error("InvalidAllocationID.NotFound", ec2.describe_addresses, AllocationIds=["eipalloc-0123456789abcdef0"])
expect_error("InvalidParameterValue", ec2.describe_addresses, Filters=[{"Name": "bogus", "Values": ["x"]}])
ec2.release_address(AllocationId=eip["AllocationId"])
assert ec2.describe_addresses()["Addresses"] == []
print("boto3 smoke: ok")
