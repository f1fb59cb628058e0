//! The agent's side of host networking: from the Instances bound here and
//! the Networks, SecurityGroups, Images and key pairs they name, the plan
//! ([`crate::net::NetPlan`]) and the metadata table, handed to the host;
//! applied before a domain is defined, within a `host_sync` of any change
//! to what is bound here, and every `object_refresh` regardless — when
//! the objects are read again, so a changed rule or group member reaches
//! running guests within `object_refresh` plus a beat.
//!
//! Passes are coalesced: one pass covers every request made before it
//! began. Each instance copy the informer stores makes a request, and
//! defining its domain waits only for a pass that covers it — a burst of
//! new guests shares one pass instead of queueing one each. A pass reads
//! each object once, and not at all when the pass before read it less
//! than `object_refresh` ago (objects.rs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_api_types::{
    ec2, Instance, Network, NetworkMode, SecurityGroupRule, DEFAULT_INSTANCE_TYPE,
};
use corral_runtime::{error_chain, Shutdown};

use super::domain::Wait;
use super::netwatch::{NetKey, NetWatches};
use super::objects::Objects;
use super::{stopped, Agent, AgentError};
use crate::hypervisor::NicSource;
use crate::metadata::InstanceMetadata;
use crate::net::{self, Allow, NetDef, NetPlan, OverlayDef, Port};

/// How often the whole ruleset is re-asserted even when the plan did not
/// change (another tool may have inserted rules above ours).
const REASSERT: Duration = Duration::from_secs(30);

/// The overlay Networks a pass saw, with the instances here naming each.
type OverlaysUsed = BTreeMap<NetKey, Vec<String>>;

/// (gateway, guest address) → what that guest is told.
type MetadataEntries = Vec<((Ipv4Addr, Ipv4Addr), InstanceMetadata)>;
/// The region the metadata service reports (the EC2 façade's default).
const REGION: &str = "corral-1";

#[derive(Default)]
pub(super) struct NetState {
    applied: Option<NetPlan>,
    at: Option<Instant>,
    /// Networks libvirt would not run, by Network uid: why.
    failed: HashMap<String, String>,
    /// The last request (`Agent::net_asked`) a finished pass covered.
    covered: u64,
    /// When the last finished pass began.
    passed: Option<Instant>,
    /// What the latest pass read.
    objects: Arc<Objects>,
    /// Watches of the overlay Networks in use.
    watches: NetWatches,
}

impl Agent {
    /// The libvirt source of each of an instance's NICs.
    pub(super) async fn nic_specs(
        &self,
        i: &Instance,
        objects: &mut Objects,
    ) -> Result<Result<Vec<crate::hypervisor::NicSpec>, Wait>, AgentError> {
        let mut out = Vec::new();
        let addrs = i
            .status
            .as_ref()
            .map(|s| s.addresses.clone())
            .unwrap_or_default();
        let for_ = format!("instances/{}", i.metadata.name);
        for (idx, a) in addrs.iter().enumerate() {
            let p = &i.metadata.project;
            let Some(n) = objects.network(&self.api, p, &a.network, &for_).await? else {
                return Ok(Err(Wait::new(
                    "WaitingForNetwork",
                    format!("network {:?} not found", a.network),
                )));
            };
            let source = match (&n.spec.mode, &n.spec.host_bridge) {
                (NetworkMode::Bridged, Some(b)) => NicSource::Bridge(b.clone()),
                _ => NicSource::Network(net::network_name(&n.metadata.uid)),
            };
            out.push(crate::hypervisor::NicSpec {
                mac: a.mac.clone(),
                source,
                tap: net::tap_name(&i.metadata.uid, idx),
            });
        }
        Ok(Ok(out))
    }

    /// The plan and the metadata entries for everything bound here, and
    /// the objects read to make them (starting from `objects`: what the
    /// pass before read, still fresh).
    async fn net_plan(
        &self,
        mut objects: Objects,
    ) -> Result<(NetPlan, MetadataEntries, Objects, OverlaysUsed), AgentError> {
        let mut instances: Vec<Arc<Instance>> = self
            .instances
            .lock()
            .expect("instances")
            .values()
            .filter(|i| i.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        instances.sort_by(|a, b| a.metadata.uid.cmp(&b.metadata.uid));
        let mut networks: BTreeMap<String, NetDef> = BTreeMap::new();
        let mut overlays = OverlaysUsed::new();
        let mut ports = Vec::new();
        let mut metadata = Vec::new();
        for i in &instances {
            let p = i.metadata.project.as_str();
            let for_ = format!("instances/{}", i.metadata.name);
            if i.status.is_none() {
                continue;
            }
            // (gateway, address) of each NIC the metadata service answers.
            let mut keys = Vec::new();
            let mut first: Option<(Ipv4Addr, String, Option<String>)> = None;
            let mut groups_all = Vec::new();
            for v in i.nics() {
                let (idx, nic) = (v.index, v.spec);
                let Some(a) = v.address else { continue };
                let (Ok(ip), false) = (a.ip.parse::<Ipv4Addr>(), a.mac.is_empty()) else {
                    continue;
                };
                let Some(n) = objects.network(&self.api, p, &a.network, &for_).await? else {
                    continue;
                };
                let Some((cidr, gw)) = n.spec.gateway() else {
                    continue;
                };
                if n.spec.mode == NetworkMode::Overlay {
                    overlays
                        .entry((p.to_string(), a.network.clone()))
                        .or_default()
                        .push(i.metadata.name.clone());
                }
                let def = networks
                    .entry(n.metadata.uid.clone())
                    .or_insert_with(|| NetDef {
                        uid: n.metadata.uid.clone(),
                        display: format!("{p}/{}", n.metadata.name),
                        cidr,
                        gateway: gw,
                        mode: n.spec.mode,
                        dhcp: n.spec.dhcp,
                        dns_servers: n.spec.dns_servers.clone(),
                        host_bridge: n.spec.host_bridge.clone(),
                        hosts: BTreeMap::new(),
                        mtu: (n.spec.mode == NetworkMode::Overlay).then_some(self.opts.overlay_mtu),
                        overlay: self.overlay_of(&n),
                    });
                def.hosts
                    .insert(a.mac.to_ascii_lowercase(), (ip, i.metadata.name.clone()));
                let mut ingress = Vec::new();
                let mut egress: Option<Vec<Allow>> = None;
                for g in &nic.security_groups {
                    groups_all.push(g.clone());
                    let Some(sg) = objects.group(&self.api, p, g, &for_).await? else {
                        continue;
                    };
                    let members = sg.status.as_ref().map(|s| s.members.clone());
                    for r in &sg.spec.ingress {
                        ingress.push(
                            self.allow(&mut objects, p, r, members.as_ref(), g, &for_)
                                .await?,
                        );
                    }
                    if !sg.spec.egress.is_empty() {
                        let e = egress.get_or_insert_with(Vec::new);
                        for r in &sg.spec.egress {
                            e.push(
                                self.allow(&mut objects, p, r, members.as_ref(), g, &for_)
                                    .await?,
                            );
                        }
                    }
                }
                let floating_ip = a.floating_ip.as_deref().and_then(|f| f.parse().ok());
                ports.push(Port {
                    display: format!("{p}/{}/{idx}", i.metadata.name),
                    tap: net::tap_name(&i.metadata.uid, idx),
                    network: n.metadata.uid.clone(),
                    ip,
                    mac: a.mac.to_ascii_lowercase(),
                    ingress,
                    egress,
                    floating_ip,
                });
                if def.managed() {
                    // Every NIC reaches the metadata service on its own
                    // network; what it says is about the first NIC.
                    first.get_or_insert((ip, a.mac.clone(), a.floating_ip.clone()));
                    keys.push((gw, ip));
                }
            }
            if let Some((local, mac, public)) = first {
                let mut md = self.instance_metadata(&mut objects, i, groups_all).await?;
                md.local_ipv4 = local.to_string();
                md.mac = mac;
                md.public_ipv4 = public;
                for k in keys {
                    metadata.push((k, md.clone()));
                }
            }
        }
        Ok((
            NetPlan {
                networks: networks.into_values().collect(),
                ports,
                metadata_port: self.opts.metadata_port,
            },
            metadata,
            objects,
            overlays,
        ))
    }

    /// An overlay Network's tunnel here: its VNI, and the forwarding
    /// table from where its ports are (`status.ports`, `status.vteps`),
    /// less this node's own. `None` until it has a VNI, on other modes,
    /// and when this node has no tunnel endpoint.
    fn overlay_of(&self, n: &Network) -> Option<OverlayDef> {
        if n.spec.mode != NetworkMode::Overlay {
            return None;
        }
        let local = self.opts.vtep?;
        let s = n.status.as_ref()?;
        let vni = s.vni?;
        let me = self.opts.node.as_str();
        let vtep = |node: &str| -> Option<Ipv4Addr> {
            if node == me {
                return None;
            }
            s.vteps.get(node)?.parse().ok().filter(|a| *a != local)
        };
        let flood = s.vteps.keys().filter_map(|node| vtep(node)).collect();
        let macs = s
            .ports
            .iter()
            .filter_map(|(mac, node)| Some((mac.to_ascii_lowercase(), vtep(node)?)))
            .collect();
        Some(OverlayDef {
            vni,
            local,
            port: self.opts.vxlan_port,
            mtu: self.opts.overlay_mtu,
            flood,
            macs,
        })
    }

    async fn allow(
        &self,
        objects: &mut Objects,
        project: &str,
        r: &SecurityGroupRule,
        own_members: Option<&Vec<String>>,
        own: &str,
        for_: &str,
    ) -> Result<Allow, AgentError> {
        let peers = match (&r.cidr, &r.source_group) {
            (Some(c), _) => vec![c.clone()],
            (None, Some(g)) if g == own => own_members
                .map(|m| m.iter().map(|ip| format!("{ip}/32")).collect())
                .unwrap_or_default(),
            (None, Some(g)) => match objects.group(&self.api, project, g, for_).await? {
                Some(sg) => sg
                    .status
                    .as_ref()
                    .map(|s| s.members.iter().map(|ip| format!("{ip}/32")).collect())
                    .unwrap_or_default(),
                None => Vec::new(),
            },
            (None, None) => Vec::new(),
        };
        Ok(Allow {
            protocol: r.protocol,
            from_port: r.from_port,
            to_port: r.to_port,
            peers,
        })
    }

    /// What the metadata service tells an instance about itself.
    async fn instance_metadata(
        &self,
        objects: &mut Objects,
        i: &Instance,
        groups: Vec<String>,
    ) -> Result<InstanceMetadata, AgentError> {
        let p = i.metadata.project.as_str();
        let for_ = format!("instances/{}", i.metadata.name);
        let mut public_keys = Vec::new();
        if let Some(k) = i.spec.key_name.as_deref() {
            if let Some(kp) = objects.keypair(&self.api, p, k, &for_).await? {
                public_keys.push((k.to_string(), kp.spec.public_key.clone()));
            }
        }
        let mut ami_id = None;
        let (mut kernel_id, mut ramdisk_id) = (None, None);
        if let Some(name) = i.spec.image.as_deref() {
            if let Some(img) = objects.image(&self.api, p, name, &for_).await? {
                ami_id = img.status.as_ref().and_then(|s| s.ec2_id.clone());
                for (want, slot) in [
                    (img.spec.kernel.as_deref(), &mut kernel_id),
                    (img.spec.ramdisk.as_deref(), &mut ramdisk_id),
                ] {
                    if let Some(n) = want {
                        *slot = objects
                            .image(&self.api, p, n, &for_)
                            .await?
                            .and_then(|x| x.status.as_ref().and_then(|s| s.ec2_id.clone()));
                    }
                }
            }
        }
        let mut groups = groups;
        groups.sort();
        groups.dedup();
        let zone = self
            .opts
            .zone
            .clone()
            .unwrap_or_else(|| corral_api_types::Node::DEFAULT_ZONE.to_string());
        Ok(InstanceMetadata {
            instance_id: i
                .status
                .as_ref()
                .and_then(|s| s.ec2_id.clone())
                .or_else(|| ec2::resource_id("Instance", &i.metadata.uid))
                .unwrap_or_else(|| i.metadata.uid.clone()),
            account_id: ec2::account_id(p),
            ami_id,
            kernel_id,
            ramdisk_id,
            instance_type: i
                .spec
                .instance_type
                .clone()
                .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string()),
            architecture: "x86_64".into(),
            hostname: i.metadata.name.clone(),
            availability_zone: zone,
            region: REGION.into(),
            public_keys,
            user_data: i
                .spec
                .user_data
                .as_ref()
                .map(|u| u.clone().into_bytes())
                .filter(|u| !u.is_empty()),
            security_groups: groups,
            launch_time: i.status.as_ref().and_then(|s| s.launch_time),
            http_tokens_required: i.spec.metadata_options.http_tokens
                == corral_api_types::HttpTokens::Required,
            http_endpoint_enabled: i.spec.metadata_options.http_endpoint.is_enabled(),
            // 1..=64 once validated.
            http_put_response_hop_limit: u8::try_from(
                i.spec.metadata_options.http_put_response_hop_limit,
            )
            .unwrap_or(64),
            tags: i
                .spec
                .metadata_options
                .instance_metadata_tags
                .is_enabled()
                .then(|| i.spec.tags.clone()),
            ..Default::default()
        })
    }

    /// A new host networking request (see `sync_net_since`).
    pub(super) fn net_ticket(&self) -> u64 {
        self.net_asked.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Makes the host's networks, firewall and metadata table match what is
    /// bound here now.
    pub(super) async fn sync_net(&self) -> Result<Arc<Objects>, AgentError> {
        self.sync_net_since(self.net_ticket()).await
    }

    /// Makes the host's networks, firewall and metadata table match what
    /// was bound here when request `ticket` was made, at least, and
    /// answers what the pass read. Does nothing before the first list of
    /// instances (an empty list must not tear down a running host).
    pub(super) async fn sync_net_since(&self, ticket: u64) -> Result<Arc<Objects>, AgentError> {
        if !self.synced.load(Ordering::SeqCst) {
            return Ok(Arc::default());
        }
        let mut state = self.net.lock().await;
        // A pass that began after this request was made has covered it.
        if state.covered >= ticket {
            return Ok(state.objects.clone());
        }
        let covers = self.net_asked.load(Ordering::SeqCst);
        let started = Instant::now();
        let mut earlier = state.objects.after(self.opts.object_refresh);
        let pushed: Vec<_> = state
            .watches
            .pushed
            .lock()
            .expect("pushed")
            .drain()
            .collect();
        for ((p, n), net) in pushed {
            earlier.put_network(&p, &n, net);
        }
        let (plan, entries, objects, overlays) = self.net_plan(earlier).await?;
        state
            .watches
            .follow(&self.api, &self.net_asked, &self.net_wake, &overlays);
        let planned = started.elapsed();
        self.on_host().set_metadata(entries);
        // Stale networks go first: one left by an earlier agent may hold the
        // bridge address a planned one needs.
        let want: Vec<String> = plan
            .networks
            .iter()
            .filter(|n| n.managed())
            .map(|n| net::network_name(&n.uid))
            .collect();
        let removed = self
            .host_libvirt_call(move |h| h.remove_networks_except(&want))
            .await?;
        for name in removed {
            tracing::info!(network = %name, "removed a network nothing here uses");
        }
        for n in plan.networks.iter().filter(|n| n.managed()) {
            let def = n.clone();
            // One network that cannot run (say, its CIDR is taken on this
            // host) must not hold up the others or the firewall.
            match self.host_libvirt_call(move |h| h.sync_network(&def)).await {
                Ok(()) => {
                    state.failed.remove(&n.uid);
                }
                Err(e) => {
                    // The log (the operator's) has libvirt's words; the
                    // condition (the tenant's) does not: they name host
                    // interfaces of other projects' networks.
                    let full = error_chain(&e);
                    let msg = format!(
                        "network {} cannot run on this node: {}",
                        n.display,
                        tenant_safe_reason(&full)
                    );
                    if state.failed.get(&n.uid) != Some(&msg) {
                        tracing::warn!(network = %n.display, error = %full, "host networking");
                    }
                    state.failed.insert(n.uid.clone(), msg);
                }
            }
        }
        state
            .failed
            .retain(|uid, _| plan.networks.iter().any(|n| &n.uid == uid));
        let networks_done = started.elapsed();
        let overlays: Vec<NetDef> = plan
            .networks
            .iter()
            .filter(|n| n.managed() && !state.failed.contains_key(&n.uid))
            .cloned()
            .collect();
        let floating: BTreeSet<Ipv4Addr> =
            plan.ports.iter().filter_map(|p| p.floating_ip).collect();
        let released = state
            .applied
            .as_ref()
            .map(|old| net::released_floating(old, &plan))
            .unwrap_or_default();
        let stale = state.at.is_none_or(|t| t.elapsed() > REASSERT);
        if state.applied.as_ref() != Some(&plan) || stale {
            let p = plan.clone();
            // Within REASSERT of a full apply, only what changed is
            // written (a new guest's chains: one restore, not a dozen
            // iptables runs); every REASSERT the whole state is checked.
            let previous = state.applied.clone().filter(|_| !stale);
            let full = self
                .host_call(move |h| h.apply_firewall(previous.as_ref(), &p))
                .await?;
            state.applied = Some(plan);
            if full {
                state.at = Some(Instant::now());
            }
        }
        // Flows of an address that left its guest, once the new DNAT is
        // in: none of them may keep reaching the old guest.
        if !released.is_empty() {
            self.host_call(move |h| h.forget_flows(&released)).await?;
        }
        // Floating addresses on the uplink after the firewall, whose DNAT
        // takes their packets to the guests.
        if let Some(dev) = self.opts.uplink.clone() {
            self.host_call(move |h| h.sync_uplink(&dev, &floating))
                .await?;
        }
        // Tunnels last (their bridges exist now): a failure fails the
        // pass, retried at the next beat, after the firewall went in.
        self.host_call(move |h| h.sync_overlays(&overlays)).await?;
        let objects = Arc::new(objects);
        state.covered = covers;
        state.passed = Some(started);
        state.objects = objects.clone();
        tracing::debug!(
            plan_ms = planned.as_millis() as u64,
            networks_ms = (networks_done - planned).as_millis() as u64,
            firewall_ms = (started.elapsed() - networks_done).as_millis() as u64,
            "host networking synced"
        );
        Ok(objects)
    }

    /// Why one of the instance's networks cannot run on this host, if so.
    pub(super) async fn network_failure(&self, i: &Instance) -> Option<String> {
        let state = self.net.lock().await;
        let plan = state.applied.as_ref()?;
        (0..i.spec.nics.len()).find_map(|idx| {
            let tap = net::tap_name(&i.metadata.uid, idx);
            let port = plan.ports.iter().find(|p| p.tap == tap)?;
            state.failed.get(&port.network).cloned()
        })
    }

    /// The `AddressLeased` condition of a running instance: each NIC served
    /// by our DHCP holds a lease for exactly its address.
    pub(super) async fn lease_state(&self, i: &Instance) -> Option<(bool, &'static str, String)> {
        let state = self.net.lock().await;
        let plan = state.applied.as_ref()?;
        let taps: Vec<String> = (0..i.spec.nics.len())
            .map(|idx| net::tap_name(&i.metadata.uid, idx))
            .collect();
        let host = self.on_host();
        Some(net::lease_verdict(plan, &taps, |bridge| {
            host.leases(bridge)
        }))
    }

    /// Whether a beat has a pass to make: something bound here changed
    /// since the last pass began, or the last pass is `object_refresh`
    /// (or REASSERT) old — its objects are due to be read again and the
    /// host checked whole.
    async fn net_pass_due(&self) -> bool {
        let state = self.net.lock().await;
        let every = self.opts.object_refresh.min(REASSERT);
        self.net_asked.load(Ordering::SeqCst) > state.covered
            || state.passed.is_none_or(|t| t.elapsed() >= every)
    }

    /// Keeps host networking in step: every `host_sync`, a pass if one is
    /// due (see `net_pass_due`); an idle node makes one per
    /// `object_refresh`.
    pub(super) async fn net_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(self.opts.host_sync);
        // The same failure every beat (say, libvirtd is away) is logged
        // once, then at debug level until it changes or clears.
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.net_wake.notified() => {}
                _ = stopped(&mut stop) => return,
            }
            if last_error.is_none() && !self.net_pass_due().await {
                continue;
            }
            match self.sync_net().await {
                Ok(_) => last_error = None,
                Err(e) => {
                    let error = error_chain(&e);
                    if last_error.as_ref() == Some(&error) {
                        tracing::debug!(%error, "host networking");
                    } else {
                        tracing::warn!(%error, "host networking");
                    }
                    last_error = Some(error);
                }
            }
        }
    }
}

/// What a tenant may be told of a host networking failure: its cause in
/// general terms, never libvirt's text (which names other projects'
/// bridges and the host's interfaces).
fn tenant_safe_reason(libvirt: &str) -> &'static str {
    if libvirt.contains("already in use") {
        "its address range overlaps a network already running on this node"
    } else if libvirt.contains("Unreachable") || libvirt.contains("connect") {
        "the hypervisor does not answer"
    } else {
        "the host refused it (the node's agent log has the details)"
    }
}

#[cfg(test)]
mod tenant_safe_tests {
    #[test]
    fn libvirt_words_do_not_reach_the_tenant() {
        let leak = "internal error: Network is already in use by interface crb0123456789ab";
        let said = super::tenant_safe_reason(leak);
        assert!(!said.contains("crb"), "{said}");
        assert!(said.contains("overlaps"), "{said}");
        assert!(!super::tenant_safe_reason("anything else: br-ex eth0").contains("br-ex"));
    }
}
