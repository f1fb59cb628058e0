"""botocore, as shipped, reads the region and zone from Corral's metadata
service. The instance it is registered as requires IMDSv2, so every answer
here proves botocore fetched a token and sent it back.

Env: AWS_EC2_METADATA_SERVICE_ENDPOINT (the service), EXPECT_REGION,
EXPECT_AZ, EXPECT_INSTANCE_ID.
"""

import os
import sys

import botocore.session
from botocore.utils import IMDSFetcher, IMDSRegionProvider, InstanceMetadataRegionFetcher


def main():
    session = botocore.session.get_session()
    endpoint = session.get_config_variable("ec2_metadata_service_endpoint")
    assert endpoint == os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"], endpoint

    # The provider botocore itself uses to find the region on EC2.
    region = IMDSRegionProvider(session).provide()
    assert region == os.environ["EXPECT_REGION"], region

    config = {"ec2_metadata_service_endpoint": endpoint, "ec2_metadata_v1_disabled": True}
    fetcher = InstanceMetadataRegionFetcher(timeout=5, num_attempts=2, config=config)
    token = fetcher._fetch_metadata_token()
    assert token, "no IMDSv2 token"
    az = fetcher._get_request(
        "latest/meta-data/placement/availability-zone/", None, token
    ).text
    assert az == os.environ["EXPECT_AZ"], az
    assert fetcher.retrieve_region() == region

    plain = IMDSFetcher(timeout=5, num_attempts=1, config=config)
    instance_id = plain._get_request(
        "latest/meta-data/instance-id", None, plain._fetch_metadata_token()
    ).text
    assert instance_id == os.environ["EXPECT_INSTANCE_ID"], instance_id

    # Without a token this instance is refused (401), which botocore
    # retries and then gives up on.
    try:
        plain._get_request("latest/meta-data/instance-id", None, "not-a-token")
    except plain._RETRIES_EXCEEDED_ERROR_CLS:
        pass
    else:
        sys.exit("a bad token was accepted")

    print(f"imds botocore: ok region={region} az={az} instance={instance_id}")


if __name__ == "__main__":
    main()
