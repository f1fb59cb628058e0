//! The agent's side of host networking: from the Instances bound here and
//! the Networks, SecurityGroups and key pairs they name, the plan
//! ([`crate::net::NetPlan`]) and the metadata table; applied before a
//! domain is defined and every second after, so a changed rule reaches
//! running guests within seconds.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Instant;

use corral_api_types::{Network, NetworkMode, SecurityGroup, SecurityGroupRule};

use super::*;
use crate::hypervisor::NicSource;
use crate::metadata::{InstanceMetadata, MetadataTable};
use crate::net::{self, Allow, NetDef, NetPlan, Port};

/// How often the whole ruleset is re-asserted even when the plan did not
/// change (another tool may have inserted rules above ours).
const REASSERT: Duration = Duration::from_secs(30);
/// The region the metadata service reports (the EC2 façade's default).
const REGION: &str = "corral-1";

#[derive(Default)]
pub(super) struct NetState {
    applied: Option<NetPlan>,
    at: Option<Instant>,
    /// Networks libvirt would not run, by Network uid: why.
    failed: HashMap<String, String>,
}

/// What one sync read from the API, by project.
#[derive(Default)]
struct Objects {
    networks: HashMap<(String, String), Option<Network>>,
    groups: HashMap<(String, String), Option<SecurityGroup>>,
}

impl Objects {
    /// `for_`: the bound instance that uses it (see `available_image`).
    async fn network(
        &mut self,
        api: &ApiClient,
        p: &str,
        n: &str,
        for_: &str,
    ) -> Result<Option<Network>, AgentError> {
        let k = (p.to_string(), n.to_string());
        if let Some(v) = self.networks.get(&k) {
            return Ok(v.clone());
        }
        let v = api
            .get::<Network>(&format!("/v1/projects/{p}/networks/{n}?for={for_}"))
            .await?;
        self.networks.insert(k, v.clone());
        Ok(v)
    }

    async fn group(
        &mut self,
        api: &ApiClient,
        p: &str,
        n: &str,
        for_: &str,
    ) -> Result<Option<SecurityGroup>, AgentError> {
        let k = (p.to_string(), n.to_string());
        if let Some(v) = self.groups.get(&k) {
            return Ok(v.clone());
        }
        let v = api
            .get::<SecurityGroup>(&format!("/v1/projects/{p}/securitygroups/{n}?for={for_}"))
            .await?;
        self.groups.insert(k, v.clone());
        Ok(v)
    }
}

impl Agent {
    /// The libvirt source of each of an instance's NICs (on a real host).
    pub(super) async fn nic_specs(
        &self,
        i: &Instance,
    ) -> Result<Result<Vec<crate::hypervisor::NicSpec>, Wait>, AgentError> {
        let mut objects = Objects::default();
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

    /// The plan and the metadata entries for everything bound here.
    async fn net_plan(
        &self,
    ) -> Result<(NetPlan, Vec<((Ipv4Addr, Ipv4Addr), InstanceMetadata)>), AgentError> {
        let mut instances: Vec<Instance> = self
            .instances
            .lock()
            .expect("instances")
            .values()
            .filter(|i| i.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        instances.sort_by(|a, b| a.metadata.uid.cmp(&b.metadata.uid));
        let mut objects = Objects::default();
        let mut networks: BTreeMap<String, NetDef> = BTreeMap::new();
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
                let mut md = self.instance_metadata(i, groups_all).await?;
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
        ))
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
        i: &Instance,
        groups: Vec<String>,
    ) -> Result<InstanceMetadata, AgentError> {
        let p = i.metadata.project.as_str();
        let for_ = format!("instances/{}", i.metadata.name);
        let mut public_keys = Vec::new();
        if let Some(k) = i.spec.key_name.as_deref() {
            if let Some(kp) = self
                .api
                .get::<KeyPair>(&format!("/v1/projects/{p}/keypairs/{k}?for={for_}"))
                .await?
            {
                public_keys.push((k.to_string(), kp.spec.public_key));
            }
        }
        let mut ami_id = None;
        let (mut kernel_id, mut ramdisk_id) = (None, None);
        if let Some(name) = i.spec.image.as_deref() {
            if let Some(img) = self
                .api
                .get::<Image>(&format!("/v1/projects/{p}/images/{name}?for={for_}"))
                .await?
            {
                ami_id = img.status.as_ref().and_then(|s| s.ec2_id.clone());
                for (want, slot) in [
                    (img.spec.kernel.as_deref(), &mut kernel_id),
                    (img.spec.ramdisk.as_deref(), &mut ramdisk_id),
                ] {
                    if let Some(n) = want {
                        *slot = self
                            .api
                            .get::<Image>(&format!("/v1/projects/{p}/images/{n}?for={for_}"))
                            .await?
                            .and_then(|x| x.status.and_then(|s| s.ec2_id));
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
            .unwrap_or_else(|| format!("{REGION}a"));
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
            ..Default::default()
        })
    }

    /// Makes the host's networks, firewall and metadata table match what is
    /// bound here. Does nothing on simulated hosts or before the first list
    /// of instances (an empty list must not tear down a running host).
    pub(super) async fn sync_net(&self) -> Result<(), AgentError> {
        if self.files.get().is_none() || !self.synced.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let mut state = self.net.lock().await;
        let started = Instant::now();
        let (plan, entries) = self.net_plan().await?;
        let planned = started.elapsed();
        self.metadata.set(entries);
        // Stale networks go first: one left by an earlier agent may hold the
        // bridge address a planned one needs.
        let want: Vec<String> = plan
            .networks
            .iter()
            .filter(|n| n.managed())
            .map(|n| net::network_name(&n.uid))
            .collect();
        let hv = self.hv.clone();
        let removed = blocking(move || {
            let mut removed = Vec::new();
            for name in hv.networks()? {
                if !want.contains(&name) {
                    hv.remove_network(&name)?;
                    removed.push(name);
                }
            }
            Ok(removed)
        })
        .await?;
        for name in removed {
            tracing::info!(network = %name, "removed a network nothing here uses");
        }
        for n in plan.networks.iter().filter(|n| n.managed()) {
            let name = net::network_name(&n.uid);
            let xml = n.libvirt_xml();
            let hosts: Vec<(String, String)> = n
                .hosts
                .iter()
                .map(|(mac, (ip, host))| (mac.clone(), NetDef::host_xml(mac, *ip, host)))
                .collect();
            let hv = self.hv.clone();
            // One network that cannot run (say, its CIDR is taken on this
            // host) must not hold up the others or the firewall.
            match blocking(move || hv.sync_network(&name, &xml, &hosts)).await {
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
        let stale = state.at.is_none_or(|t| t.elapsed() > REASSERT);
        if state.applied.as_ref() != Some(&plan) || stale {
            let p = plan.clone();
            // Within REASSERT of a full apply, only what changed is
            // written (a new guest's chains: one restore, not a dozen
            // iptables runs); every REASSERT the whole state is checked.
            let previous = state.applied.clone().filter(|_| !stale);
            let full = tokio::task::spawn_blocking(move || match previous {
                Some(prev) => net::update_firewall(&prev, &p),
                None => net::apply_firewall(&p).map(|()| true),
            })
            .await
            .map_err(|e| AgentError::Other(e.to_string()))?
            .map_err(|e| AgentError::Other(error_chain(&e)))?;
            state.applied = Some(plan);
            if full {
                state.at = Some(Instant::now());
            }
        }
        tracing::debug!(
            plan_ms = planned.as_millis() as u64,
            networks_ms = (networks_done - planned).as_millis() as u64,
            firewall_ms = (started.elapsed() - networks_done).as_millis() as u64,
            "host networking synced"
        );
        Ok(())
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

    /// The `AddressLeased` condition of a running instance on a real host:
    /// each NIC served by our DHCP holds a lease for exactly its address.
    pub(super) async fn lease_state(&self, i: &Instance) -> Option<(bool, &'static str, String)> {
        self.files.get()?;
        let state = self.net.lock().await;
        let plan = state.applied.as_ref()?;
        let taps: Vec<String> = (0..i.spec.nics.len())
            .map(|idx| net::tap_name(&i.metadata.uid, idx))
            .collect();
        Some(net::lease_verdict(plan, &taps, net::leases))
    }

    /// Keeps host networking in step, every second.
    pub(super) async fn net_loop(self: Arc<Self>, mut stop: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // The same failure every second (say, libvirtd is away) is logged
        // once, then at debug level until it changes or clears.
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut stop) => return,
            }
            match self.sync_net().await {
                Ok(()) => last_error = None,
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

    /// Serves the metadata service to guests, on a real host.
    pub(super) async fn metadata_server(self: Arc<Self>, mut stop: Shutdown) {
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], self.opts.metadata_port));
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot serve instance metadata");
                return;
            }
        };
        tracing::info!(%addr, "serving instance metadata");
        let table: MetadataTable = self.metadata.clone();
        let done = async move { stopped(&mut stop).await };
        if let Err(e) = crate::metadata::serve(listener, table, done).await {
            tracing::error!(error = %e, "metadata service stopped");
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
