//! Snapshots: CreateSnapshot, DescribeSnapshots, DeleteSnapshot.

use corral_api_types::ec2::resource_id;
use corral_api_types::{Resource, Snapshot, SnapshotSpec, Volume};

use super::volumes::{size, volume_by_id};
use super::{check_ids, ts, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one, Filters};
use crate::objects::{self, list_all, new_uid, tag_specs, Tagged};
use crate::page::Page;
use crate::xml::Xml;

fn snap_state(s: &Snapshot) -> &'static str {
    match s.status.as_ref().map(|s| s.phase) {
        Some(corral_api_types::SnapshotPhase::Completed) => "completed",
        Some(corral_api_types::SnapshotPhase::Error) => "error",
        _ => "pending",
    }
}

fn write_snapshot(x: &mut Xml, s: &Snapshot, vols: &[Volume], account: &str) {
    let vol = vols.iter().find(|v| v.metadata.name == s.spec.volume);
    let st = s.status.as_ref();
    x.leaf("snapshotId", s.ec2_id())
        .leaf("volumeId", vol.map(|v| v.ec2_id()).unwrap_or_default())
        .leaf("status", snap_state(s))
        .opt("startTime", s.metadata.creation_timestamp.as_ref().map(ts))
        .leaf("progress", format!("{}%", st.map_or(0, |s| s.progress)))
        .leaf("ownerId", account)
        .leaf(
            "volumeSize",
            st.and_then(|s| s.size_gib).or(vol.map(size)).unwrap_or(0),
        )
        .leaf("description", s.spec.description.as_deref().unwrap_or(""))
        .leaf("encrypted", false)
        .tags("tagSet", s.tags());
}

pub async fn create_snapshot(ctx: &Ctx<'_>) -> Result<Xml> {
    let v = volume_by_id(ctx).await?;
    let tags = tag_specs(ctx.params, "snapshot")?;
    let description = ctx.params.get_nonempty("Description").map(str::to_string);
    ctx.gate()?;
    let uid = new_uid(ctx.project(), Snapshot::KIND, None, 0);
    let id = resource_id(Snapshot::KIND, &uid).unwrap_or_default();
    let mut s = Snapshot::new(
        ctx.project(),
        &id,
        SnapshotSpec {
            volume: v.metadata.name.clone(),
            description,
            tags,
        },
    );
    s.metadata.uid = uid;
    let s = objects::create(ctx.store, s).await?;
    let mut x = Xml::new();
    write_snapshot(&mut x, &s, &[v], &ctx.account());
    Ok(x)
}

pub async fn describe_snapshots(ctx: &Ctx<'_>) -> Result<Xml> {
    let ids = ctx.params.list("SnapshotId")?;
    check_ids(
        &ids,
        &["snap"],
        "InvalidSnapshotID.Malformed",
        "snapshot id",
    )?;
    let page = Page::parse(ctx.params, !ids.is_empty(), "snapshotIds", 5)?;
    let filters = Filters::parse(
        ctx.params,
        &[
            "snapshot-id",
            "volume-id",
            "status",
            "owner-id",
            "description",
            "progress",
            "start-time",
            "volume-size",
            "encrypted",
        ],
        true,
    )?;
    ctx.gate()?;
    let mut snaps = list_all::<Snapshot>(ctx.store, ctx.project()).await?;
    if let Some(missing) = ids
        .iter()
        .find(|id| !snaps.iter().any(|s| s.ec2_id() == **id))
    {
        return Err(Ec2Error::client(
            "InvalidSnapshot.NotFound",
            format!("The snapshot '{missing}' does not exist."),
        ));
    }
    let vols = list_all::<Volume>(ctx.store, ctx.project()).await?;
    let account = ctx.account();
    snaps.retain(|s| ids.is_empty() || ids.contains(&s.ec2_id()));
    snaps.retain(|s| {
        filters.matches(
            |f| match f {
                "snapshot-id" => one(s.ec2_id()),
                "volume-id" => vols
                    .iter()
                    .filter(|v| v.metadata.name == s.spec.volume)
                    .map(|v| v.ec2_id())
                    .collect(),
                "status" => one(snap_state(s)),
                "owner-id" => one(account.clone()),
                "description" => s.spec.description.clone().into_iter().collect(),
                "progress" => one(format!("{}%", s.status.as_ref().map_or(0, |s| s.progress))),
                "start-time" => s
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(ts)
                    .into_iter()
                    .collect(),
                "volume-size" => s
                    .status
                    .as_ref()
                    .and_then(|s| s.size_gib)
                    .map(|n| n.to_string())
                    .into_iter()
                    .collect(),
                _ => b(false),
            },
            s.tags(),
        )
    });
    snaps.sort_by_key(|s| s.ec2_id());
    let (snaps, next) = page.apply(snaps, |s| s.ec2_id());
    let mut x = Xml::new();
    x.set("snapshotSet", &snaps, |x, s| {
        write_snapshot(x, s, &vols, &account)
    });
    x.opt("nextToken", next);
    Ok(x)
}

pub async fn delete_snapshot(ctx: &Ctx<'_>) -> Result<Xml> {
    let id = ctx.params.required("SnapshotId")?.to_string();
    check_ids(
        std::slice::from_ref(&id),
        &["snap"],
        "InvalidSnapshotID.Malformed",
        "snapshot id",
    )?;
    let s = list_all::<Snapshot>(ctx.store, ctx.project())
        .await?
        .into_iter()
        .find(|s| s.ec2_id() == id)
        .ok_or_else(|| {
            Ec2Error::client(
                "InvalidSnapshot.NotFound",
                format!("The snapshot '{id}' does not exist."),
            )
        })?;
    if list_all::<Volume>(ctx.store, ctx.project())
        .await?
        .iter()
        .any(|v| {
            v.spec.source.snapshot.as_deref() == Some(s.metadata.name.as_str())
                && v.metadata.deletion_timestamp.is_none()
        })
    {
        return Err(Ec2Error::client(
            "InvalidSnapshot.InUse",
            format!("The snapshot {id} is in use by a volume"),
        ));
    }
    ctx.gate()?;
    objects::delete(ctx.store, &s).await?;
    Ok(super::ok_return())
}
