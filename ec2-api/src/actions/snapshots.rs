//! Snapshots: CreateSnapshot, DescribeSnapshots, DeleteSnapshot.

use corral_api_types::ec2::resource_id;
use corral_api_types::{Resource, Snapshot, SnapshotSpec, Volume};

use super::describe::{page_answer, Describe};
use super::ids::SNAPSHOT;
use super::volumes::{size, volume_by_id};
use super::{created, Ctx};
use crate::error::{Ec2Error, Result};
use crate::filter::{b, one};
use crate::objects::{self, new_uid, tag_specs, Tagged};
use crate::xml::Xml;

fn snap_state(s: &Snapshot) -> &'static str {
    match s.status.as_ref().map(|s| s.phase) {
        Some(corral_api_types::SnapshotPhase::Completed) => "completed",
        Some(corral_api_types::SnapshotPhase::Error) => "error",
        _ => "pending",
    }
}

/// How far a snapshot got, `<n>%`.
fn progress(s: &Snapshot) -> String {
    format!("{}%", s.status.as_ref().map_or(0, |s| s.progress))
}

fn write_snapshot(x: &mut Xml, s: &Snapshot, vols: &[Volume], account: &str) {
    let vol = vols.iter().find(|v| v.metadata.name == s.spec.volume);
    let st = s.status.as_ref();
    x.leaf("snapshotId", s.ec2_id())
        .leaf("volumeId", vol.map(|v| v.ec2_id()).unwrap_or_default())
        .leaf("status", snap_state(s))
        .opt("startTime", created(&s.metadata))
        .leaf("progress", progress(s))
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

const FILTERS: &[&str] = &[
    "snapshot-id",
    "volume-id",
    "status",
    "owner-id",
    "description",
    "progress",
    "start-time",
    "volume-size",
    "encrypted",
];

pub async fn describe_snapshots(ctx: &Ctx<'_>) -> Result<Xml> {
    let d = Describe::parse(ctx, &SNAPSHOT, FILTERS)?;
    let snaps = ctx.list::<Snapshot>().await?;
    d.check_found(&SNAPSHOT, &snaps, |s| s.ec2_id())?;
    let vols = ctx.list::<Volume>().await?;
    let account = ctx.account();
    let field = |s: &Snapshot, f: &str| match f {
        "snapshot-id" => one(s.ec2_id()),
        "volume-id" => vols
            .iter()
            .filter(|v| v.metadata.name == s.spec.volume)
            .map(|v| v.ec2_id())
            .collect(),
        "status" => one(snap_state(s)),
        "owner-id" => one(account.clone()),
        "description" => s.spec.description.clone().into_iter().collect(),
        "progress" => one(progress(s)),
        "start-time" => created(&s.metadata).into_iter().collect(),
        "volume-size" => s
            .status
            .as_ref()
            .and_then(|s| s.size_gib)
            .map(|n| n.to_string())
            .into_iter()
            .collect(),
        _ => b(false),
    };
    let (snaps, next) = d.select(snaps, |s| s.ec2_id(), field, |s| s.tags());
    Ok(page_answer("snapshotSet", &snaps, next, |x, s| {
        write_snapshot(x, s, &vols, &account)
    }))
}

pub async fn delete_snapshot(ctx: &Ctx<'_>) -> Result<Xml> {
    let id = SNAPSHOT.required(ctx.params)?;
    let s = SNAPSHOT.find(ctx.list::<Snapshot>().await?, &id, |s| s.ec2_id())?;
    if ctx.list::<Volume>().await?.iter().any(|v| {
        v.spec.source.snapshot.as_deref() == Some(s.metadata.name.as_str())
            && v.metadata.deletion_timestamp.is_none()
    }) {
        return Err(Ec2Error::client(
            "InvalidSnapshot.InUse",
            format!("The snapshot {id} is in use by a volume"),
        ));
    }
    ctx.gate()?;
    objects::delete(ctx.store, &s).await?;
    Ok(super::ok_return())
}
