"""The euca2ools tutorial, walked with boto 2 (the library euca2ools 2 was
built on) against a `corral up`: add a key pair, open tcp/22 in the
default group, run an m1.tiny with the key, describe it until running,
read its console, terminate it, close the port and delete the key.

The rc file `corral credentials` wrote is sourced first: EC2_URL,
EC2_ACCESS_KEY, EC2_SECRET_KEY and AWS_CA_BUNDLE are euca2ools' own
variables (and the CA file). boto 2 matches a certificate against its DNS
names only (no IP addresses), so it is reached as `localhost`, a name the
certificate holds, on the rc file's port.

The walk runs twice: signed SigV2 (HmacSHA256, boto's own
QuerySignatureV2AuthHandler), as earlier boto 2 releases and euca2ools 2
signed EC2, and signed SigV4, boto 2.49's default; both send boto 2's API
version, 2014-10-01. `CONSOLE` says what the console holds: `none` on a simulated
host, which prints nothing. Exits non-zero on the first failed check."""
import hashlib
import os
import subprocess
import time
import urllib.parse

import boto
import boto.ec2.connection
import boto.exception
from boto.regioninfo import RegionInfo

url = urllib.parse.urlsplit(os.environ["EC2_URL"])
assert url.scheme == "https" and url.hostname == "127.0.0.1", url
if not boto.config.has_section("Boto"):
    boto.config.add_section("Boto")
boto.config.set("Boto", "ca_certificates_file", os.environ["AWS_CA_BUNDLE"])
boto.config.set("Boto", "num_retries", "0")
image_name = os.environ["IMAGE_NAME"]
console = os.environ["CONSOLE"]


class SigV2Connection(boto.ec2.connection.EC2Connection):
    """EC2 signed with SigV2, as earlier boto 2 releases did: boto's own
    handler for the `ec2` capability (2.49 asks for `hmac-v4`)."""

    def _required_auth_capability(self):
        return ["ec2"]


def connect(cls):
    region = RegionInfo(name="corral-1", endpoint="localhost")
    conn = cls(
        aws_access_key_id=os.environ["EC2_ACCESS_KEY"],
        aws_secret_access_key=os.environ["EC2_SECRET_KEY"],
        region=region,
        is_secure=True,
        port=url.port,
        path="/",
        validate_certs=True,
    )
    # SigV4's scope: boto 2 would guess both from the host name.
    conn.auth_region_name = "corral-1"
    conn.auth_service_name = "ec2"
    return conn


def wait_for(conn, instance_id, state, seconds=120):
    deadline = time.time() + seconds
    while True:
        [inst] = conn.get_only_instances(instance_ids=[instance_id])
        if inst.state == state:
            return inst
        assert time.time() < deadline, f"{instance_id}: still {inst.state}, not {state}"
        time.sleep(1)


def expect_error(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except boto.exception.EC2ResponseError as e:
        assert e.error_code == code, f"{fn.__name__}: expected {code}, got {e.error_code}: {e}"
        return
    raise AssertionError(f"{fn.__name__}: expected {code}, it succeeded")


def ssh_rules(conn):
    [g] = conn.get_all_security_groups(groupnames=["default"])
    return [
        r for r in g.rules
        if (r.ip_protocol, r.from_port, r.to_port) == ("tcp", "22", "22")
        and "0.0.0.0/0" in [grant.cidr_ip for grant in r.grants]
    ]


def walk(conn, label):
    assert conn.APIVersion == "2014-10-01", conn.APIVersion

    # euca-describe-availability-zones, euca-describe-images
    zones = conn.get_all_zones()
    assert [(z.name, z.state) for z in zones] == [("corral-1a", "available")], zones
    images = [i for i in conn.get_all_images() if i.name == image_name]
    assert len(images) == 1, images
    image_id = images[0].id
    assert image_id.startswith("ami-"), image_id

    # euca-add-keypair tutorial
    kp = conn.create_key_pair("tutorial")
    assert kp.name == "tutorial", kp.name
    assert kp.material.startswith("-----BEGIN RSA PRIVATE KEY-----"), kp.material[:40]
    # EC2's fingerprint of an RSA key it made, as AWS says to check it:
    # openssl pkcs8 -in KEY -inform PEM -outform DER -topk8 -nocrypt | openssl sha1 -c
    der = subprocess.run(
        ["openssl", "pkcs8", "-inform", "PEM", "-outform", "DER", "-topk8", "-nocrypt"],
        input=kp.material.encode(), capture_output=True, check=True,
    ).stdout
    sha1 = hashlib.sha1(der).hexdigest()
    assert kp.fingerprint == ":".join(sha1[i:i + 2] for i in range(0, 40, 2)), kp.fingerprint
    [listed] = conn.get_all_key_pairs(keynames=["tutorial"])
    assert (listed.name, listed.fingerprint) == ("tutorial", kp.fingerprint), listed
    expect_error("InvalidKeyPair.Duplicate", conn.create_key_pair, "tutorial")

    # euca-authorize -P tcp -p 22 -s 0.0.0.0/0 default
    rule = dict(group_name="default", ip_protocol="tcp", from_port=22, to_port=22, cidr_ip="0.0.0.0/0")
    assert ssh_rules(conn) == []
    assert conn.authorize_security_group(**rule) is True
    assert len(ssh_rules(conn)) == 1, ssh_rules(conn)

    # euca-run-instances -t m1.tiny -k tutorial IMAGE
    r = conn.run_instances(image_id, instance_type="m1.tiny", key_name="tutorial")
    assert r.id.startswith("r-"), r.id
    # EC2 names a VPC instance's groups on the instance, not the reservation.
    assert r.groups == [], r.groups
    [inst] = r.instances
    instance_id = inst.id
    assert instance_id.startswith("i-") and len(instance_id) == 19, instance_id
    assert (inst.state, inst.state_code) == ("pending", 0), inst.state
    assert (inst.instance_type, inst.image_id, inst.key_name) == ("m1.tiny", image_id, "tutorial"), vars(inst)
    assert [g.name for g in inst.groups] == ["default"], inst.groups

    # euca-describe-instances, until it runs
    inst = wait_for(conn, instance_id, "running")
    assert inst.state_code == 16, inst.state_code
    assert (inst.instance_type, inst.image_id, inst.key_name) == ("m1.tiny", image_id, "tutorial"), vars(inst)
    assert [g.name for g in inst.groups] == ["default"], inst.groups
    assert inst.private_ip_address, vars(inst)
    assert inst.launch_time, vars(inst)
    [res] = conn.get_all_reservations(instance_ids=[instance_id])
    assert res.id == r.id and [i.id for i in res.instances] == [instance_id], res

    # euca-get-console-output
    out = conn.get_console_output(instance_id)
    assert out.instance_id == instance_id, vars(out)
    assert out.timestamp and out.timestamp.endswith("Z"), vars(out)
    if console == "none":
        assert out.output is None, out.output
    else:
        assert out.output and console.encode() in out.output, out.output

    # euca-terminate-instances
    [t] = conn.terminate_instances([instance_id])
    assert t.id == instance_id, vars(t)
    assert (t.previous_state, t.previous_state_code) == ("running", 16), vars(t)
    assert t.state in ("shutting-down", "terminated"), t.state
    inst = wait_for(conn, instance_id, "terminated")
    assert inst.state_code == 48, inst.state_code

    # euca-revoke -P tcp -p 22 -s 0.0.0.0/0 default
    assert conn.revoke_security_group(**rule) is True
    assert ssh_rules(conn) == []

    # euca-delete-keypair tutorial
    assert conn.delete_key_pair("tutorial") is True
    expect_error("InvalidKeyPair.NotFound", conn.get_all_key_pairs, keynames=["tutorial"])
    print(f"boto 2 tutorial ({label}): ok")


for cls, handler, label in [
    (SigV2Connection, "QuerySignatureV2AuthHandler", "SigV2"),
    (boto.ec2.connection.EC2Connection, "HmacAuthV4Handler", "SigV4"),
]:
    conn = connect(cls)
    assert type(conn._auth_handler).__name__ == handler, conn._auth_handler
    walk(conn, label)
print(f"boto {boto.__version__}: euca2ools tutorial: ok")
