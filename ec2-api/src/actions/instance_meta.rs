//! An instance's metadata options through EC2 — RunInstances'
//! `MetadataOptions.*` (read here for `launch`), ModifyInstanceMetadataOptions
//! and the `metadataOptions` that DescribeInstances writes — and
//! GetPasswordData.
//!
//! The options live in `spec.metadataOptions` (their rules, the hop limit's
//! range and the tag keys that allowing tags restricts, are api-types');
//! each node's metadata service applies them from there. The IMDS is
//! reached over IPv4 only, so `HttpProtocolIpv6` is accepted only as
//! `disabled`.

use chrono::Utc;
use corral_api_types::{HttpTokens, Instance, MetadataOptions, MetadataSwitch, HOP_LIMIT_RANGE};

use super::ids::INSTANCE;
use super::instance_view::{state, SHUTTING_DOWN, TERMINATED};
use super::instances::visible_instance;
use super::{ts, Ctx};
use crate::error::{Ec2Error, Result};
use crate::query::{clip, Params};
use crate::xml::Xml;

/// `Value (v) for parameter name is invalid. Expected: …`, as EC2 words it.
fn bad_value(name: &str, v: &str, expected: &str) -> Ec2Error {
    Ec2Error::invalid_value(format!(
        "Value ({}) for parameter {name} is invalid. Expected: {expected}.",
        clip(v)
    ))
}

fn switch(name: &str, v: &str) -> Result<MetadataSwitch> {
    match v {
        "enabled" => Ok(MetadataSwitch::Enabled),
        "disabled" => Ok(MetadataSwitch::Disabled),
        other => Err(bad_value(name, other, "'enabled' or 'disabled'")),
    }
}

/// `base` with the options a request of `action` names (`prefix` +
/// `HttpTokens`, `HttpEndpoint`, `HttpPutResponseHopLimit`,
/// `InstanceMetadataTags`, `HttpProtocolIpv6`) applied: one absent or
/// empty (what SDKs send for unset) keeps its value.
pub fn read_options(
    p: &Params,
    prefix: &str,
    base: MetadataOptions,
    action: &str,
) -> Result<MetadataOptions> {
    let name = |f: &str| format!("{prefix}{f}");
    let mut o = base;
    let tokens = name("HttpTokens");
    if let Some(v) = p.get_nonempty(&tokens) {
        o.http_tokens = match v {
            "optional" => HttpTokens::Optional,
            "required" => HttpTokens::Required,
            other => return Err(bad_value(&tokens, other, "'optional' or 'required'")),
        };
    }
    let endpoint = name("HttpEndpoint");
    if let Some(v) = p.get_nonempty(&endpoint) {
        o.http_endpoint = switch(&endpoint, v)?;
    }
    let tags = name("InstanceMetadataTags");
    if let Some(v) = p.get_nonempty(&tags) {
        o.instance_metadata_tags = switch(&tags, v)?;
    }
    let hops = name("HttpPutResponseHopLimit");
    if p.get_nonempty(&hops).is_some() {
        let (min, max) = HOP_LIMIT_RANGE;
        if let Some(n) = p.int_in(&hops, min.into(), max.into())? {
            o.http_put_response_hop_limit = u32::try_from(n).unwrap_or(min);
        }
    }
    let ipv6 = name("HttpProtocolIpv6");
    match p.get_nonempty(&ipv6) {
        None | Some("disabled") => {}
        Some("enabled") => {
            return Err(Ec2Error::client(
                "UnsupportedOperation",
                format!(
                    "{action}: {ipv6}=enabled is not supported by Corral; \
                     the instance metadata service is reached over IPv4 only"
                ),
            ))
        }
        Some(other) => return Err(bad_value(&ipv6, other, "'enabled' or 'disabled'")),
    }
    Ok(o)
}

/// The fields of an `InstanceMetadataOptionsResponse` (DescribeInstances'
/// `metadataOptions`, ModifyInstanceMetadataOptions' answer).
pub fn write_options(x: &mut Xml, o: &MetadataOptions, state: &str) {
    x.leaf("state", state)
        .leaf("httpTokens", o.http_tokens.as_str())
        .leaf("httpPutResponseHopLimit", o.http_put_response_hop_limit)
        .leaf("httpEndpoint", o.http_endpoint.as_str())
        .leaf("httpProtocolIpv6", "disabled")
        .leaf("instanceMetadataTags", o.instance_metadata_tags.as_str());
}

/// ModifyInstanceMetadataOptions: the options named change, the others
/// stay. The answer's state is `pending` when something changed (the
/// instance's node applies it next), `applied` when nothing did.
pub async fn modify_options(ctx: &Ctx<'_>) -> Result<Xml> {
    const ACTION: &str = "ModifyInstanceMetadataOptions";
    let p = ctx.params;
    let id = INSTANCE.required(p)?;
    let i = visible_instance(ctx, &id).await?;
    if matches!(state(&i), SHUTTING_DOWN | TERMINATED) {
        return Err(Ec2Error::incorrect_state(format!(
            "The instance '{id}' is not in a state from which its metadata options can be modified."
        )));
    }
    let wanted = read_options(p, "", i.spec.metadata_options, ACTION)?;
    ctx.gate()?;
    let (options, state) = if wanted == i.spec.metadata_options {
        (wanted, "applied")
    } else {
        let updated: Instance = ctx
            .update(&i.metadata.name, |i: &mut Instance| {
                // Applied to what is stored now: a concurrent change to
                // an option this request does not name is kept.
                i.spec.metadata_options = read_options(p, "", i.spec.metadata_options, ACTION)?;
                Ok(())
            })
            .await?;
        tracing::info!(instance = %id, "ModifyInstanceMetadataOptions");
        (updated.spec.metadata_options, "pending")
    };
    let mut x = Xml::new();
    x.leaf("instanceId", &id)
        .el("instanceMetadataOptions", |x| {
            write_options(x, &options, state);
        });
    Ok(x)
}

/// GetPasswordData: Corral's guests are Linux, which has no password for
/// EC2 to hand out; the answer is EC2's for such an instance, an empty
/// `passwordData`.
pub async fn password_data(ctx: &Ctx<'_>) -> Result<Xml> {
    let id = INSTANCE.required(ctx.params)?;
    visible_instance(ctx, &id).await?;
    ctx.gate()?;
    let mut x = Xml::new();
    x.leaf("instanceId", &id)
        .leaf("timestamp", ts(&Utc::now()))
        .leaf("passwordData", "");
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(q: &str) -> Result<MetadataOptions> {
        read_options(
            &Params::parse(q.as_bytes()),
            "MetadataOptions.",
            MetadataOptions::default(),
            "RunInstances",
        )
    }

    #[test]
    fn named_options_change_and_the_rest_keep_their_values() {
        assert_eq!(read("").unwrap(), MetadataOptions::default());
        let o = read(
            "MetadataOptions.HttpTokens=required&MetadataOptions.HttpEndpoint=disabled\
             &MetadataOptions.HttpPutResponseHopLimit=64\
             &MetadataOptions.InstanceMetadataTags=enabled\
             &MetadataOptions.HttpProtocolIpv6=disabled",
        )
        .unwrap();
        assert_eq!(
            o,
            MetadataOptions {
                http_tokens: HttpTokens::Required,
                http_endpoint: MetadataSwitch::Disabled,
                http_put_response_hop_limit: 64,
                instance_metadata_tags: MetadataSwitch::Enabled,
            }
        );
        // Empty values (unset strings) and absent ones keep the base.
        let base = o;
        let p = Params::parse(b"HttpTokens=&HttpPutResponseHopLimit=2");
        let again = read_options(&p, "", base, "ModifyInstanceMetadataOptions").unwrap();
        assert_eq!(
            again,
            MetadataOptions {
                http_put_response_hop_limit: 2,
                ..base
            }
        );
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for (q, code, says) in [
            (
                "MetadataOptions.HttpTokens=sometimes",
                "InvalidParameterValue",
                "Value (sometimes) for parameter MetadataOptions.HttpTokens is invalid",
            ),
            (
                "MetadataOptions.HttpEndpoint=on",
                "InvalidParameterValue",
                "MetadataOptions.HttpEndpoint",
            ),
            (
                "MetadataOptions.InstanceMetadataTags=yes",
                "InvalidParameterValue",
                "MetadataOptions.InstanceMetadataTags",
            ),
            (
                "MetadataOptions.HttpPutResponseHopLimit=0",
                "InvalidParameterValue",
                "MetadataOptions.HttpPutResponseHopLimit is invalid. Expected a value between 1 and 64",
            ),
            (
                "MetadataOptions.HttpPutResponseHopLimit=65",
                "InvalidParameterValue",
                "MetadataOptions.HttpPutResponseHopLimit",
            ),
            (
                "MetadataOptions.HttpPutResponseHopLimit=x",
                "InvalidParameterValue",
                "MetadataOptions.HttpPutResponseHopLimit",
            ),
            (
                "MetadataOptions.HttpProtocolIpv6=enabled",
                "UnsupportedOperation",
                "RunInstances: MetadataOptions.HttpProtocolIpv6=enabled is not supported by Corral",
            ),
            (
                "MetadataOptions.HttpProtocolIpv6=maybe",
                "InvalidParameterValue",
                "MetadataOptions.HttpProtocolIpv6",
            ),
        ] {
            let e = read(q).unwrap_err();
            assert_eq!(e.code, code, "{q}: {}", e.message);
            assert!(e.message.contains(says), "{q}: {}", e.message);
        }
        // A hostile value is echoed clipped.
        let long = format!("MetadataOptions.HttpTokens={}", "x".repeat(10_000));
        assert!(read(&long).unwrap_err().message.len() < 400);
    }

    #[test]
    fn the_answer_has_every_field_of_the_wire_shape() {
        let mut x = Xml::new();
        let o = MetadataOptions {
            http_tokens: HttpTokens::Required,
            http_put_response_hop_limit: 3,
            ..Default::default()
        };
        write_options(&mut x, &o, "pending");
        assert_eq!(
            x.into_string(),
            "<state>pending</state><httpTokens>required</httpTokens>\
             <httpPutResponseHopLimit>3</httpPutResponseHopLimit>\
             <httpEndpoint>enabled</httpEndpoint><httpProtocolIpv6>disabled</httpProtocolIpv6>\
             <instanceMetadataTags>disabled</instanceMetadataTags>"
        );
    }
}
