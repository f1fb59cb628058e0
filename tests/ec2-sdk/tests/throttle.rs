//! Request rate per access key: beyond it the façade answers
//! `RequestLimitExceeded` (HTTP 503, as EC2 does), which the AWS SDK
//! treats as throttling and retries with backoff.

mod common;

use aws_sdk_ec2::config::retry::RetryConfig;
use common::{client, code};
use corral_api_types::rate::RateLimit;
use corral_ec2_api::testing::{add_user, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_callers_get_request_limit_exceeded_and_the_sdk_retries() {
    let s = start().await;
    let alice = add_user(&s.store, "alice", Some("demo")).await;
    let bob = add_user(&s.store, "bob", Some("demo")).await;
    s.limiter.set_limit(RateLimit {
        burst: 2,
        per_second: 10.0,
    });
    let no_retries = |c: aws_sdk_ec2::Client| {
        aws_sdk_ec2::Client::from_conf(
            c.config()
                .to_builder()
                .retry_config(RetryConfig::disabled())
                .build(),
        )
    };
    // Without retries, the third call of a burst is refused.
    let once = no_retries(client(&s, &alice));
    assert!(once.describe_regions().send().await.is_ok());
    assert!(once.describe_regions().send().await.is_ok());
    assert_eq!(
        code(once.describe_regions().send().await),
        "RequestLimitExceeded"
    );
    // Another access key is not held back.
    let other = no_retries(client(&s, &bob));
    assert!(other.describe_regions().send().await.is_ok());
    // The SDK retries throttling with backoff: a burst of calls all
    // succeed (more attempts than the default 3 so jitter can't flake).
    let patient = aws_sdk_ec2::Client::from_conf(
        client(&s, &alice)
            .config()
            .to_builder()
            .retry_config(RetryConfig::standard().with_max_attempts(10))
            .build(),
    );
    for i in 0..8 {
        let r = patient.describe_regions().send().await;
        assert!(r.is_ok(), "call {i}: {r:?}");
    }
}
