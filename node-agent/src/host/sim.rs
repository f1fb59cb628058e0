//! [`SimHost`]: the simulated twin of [`super::RealHost`], for hosts on
//! libvirt's test driver (tests, chaos runs and scale benchmarks), as
//! omicron's simulated sled agent twins the real one.
//!
//! The agent runs the same code against it: it asks for root disks,
//! seeds, volume files, libvirt networks with their DHCP reservations,
//! firewall plans and the metadata table, and the simulated host records
//! what it was asked — the current state, not a history: an instance's
//! entry goes with the instance, a network's with the network — so tests
//! can read it with [`SimHost::plans`].
//!
//! It must stay cheap: one process runs thousands of these hosts and
//! 100,000 instances, so it does no I/O, starts no process, keeps only
//! what it was given (no copies per read but [`SimHost::plans`]) and
//! answers at once. Its guests run nothing: images are named, never
//! pulled ([`ImageSupply::Named`]), and there is no console log.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use corral_runtime::Shutdown;

use super::{ImageSupply, Result, Seed, ROOT_DEVICE, SEED_DEVICE};
use crate::hypervisor::DiskSpec;
use crate::metadata::InstanceMetadata;
use crate::net::{self, Lease, NetDef, NetPlan, Port};

/// An instance's root disk, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDisk {
    /// What it overlays: an image's stand-in (see
    /// [`super::named_image`]).
    pub base: PathBuf,
    pub base_format: String,
    pub min_bytes: u64,
}

/// What a simulated host holds for one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimInstance {
    pub root_disk: Option<SimDisk>,
    /// The NoCloud seed last written: instance id, hostname, SSH keys and
    /// user-data.
    pub seed: Option<Seed>,
}

/// A volume or snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFile {
    /// What it was copied from (`None`: created empty).
    pub source: Option<PathBuf>,
    pub size_bytes: u64,
}

/// Everything a simulated host was asked to hold, as it stands now.
#[derive(Debug, Clone, Default)]
pub struct SimPlans {
    /// By instance uid.
    pub instances: BTreeMap<String, SimInstance>,
    /// Volume and snapshot files, by path.
    pub files: BTreeMap<PathBuf, SimFile>,
    /// Corral's libvirt networks by libvirt name (`corral-<uid>`): the
    /// bridge (`bridge()`), gateway, CIDR and DHCP reservations
    /// (`hosts`: MAC → (IP, hostname)).
    pub networks: BTreeMap<String, NetDef>,
    /// The firewall plan last applied: one [`Port`] per NIC (tap,
    /// network, IP, MAC, the security groups' ingress and egress allows,
    /// floating address) and the networks they are on.
    pub firewall: NetPlan,
    /// Times the firewall was applied whole, and changed incrementally.
    pub firewall_applies: (u64, u64),
    /// The metadata table: (gateway, guest address) → what that guest is
    /// told.
    pub metadata: BTreeMap<(Ipv4Addr, Ipv4Addr), Arc<InstanceMetadata>>,
    /// The floating addresses held on each uplink (`--uplink`), by
    /// device.
    pub uplink: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Every gratuitous ARP sent, in order: (device, address).
    pub announced: Vec<(String, Ipv4Addr)>,
    /// Every floating address whose tracked flows were forgotten, in
    /// order.
    pub forgotten: Vec<Ipv4Addr>,
}

impl SimPlans {
    /// The firewall's view of instance `uid`'s NICs, in NIC order.
    pub fn ports_of(&self, uid: &str) -> Vec<&Port> {
        let taps: Vec<String> = (0..corral_api_types::kinds::instance::MAX_NICS)
            .map(|i| net::tap_name(uid, i))
            .collect();
        let mut out: Vec<(usize, &Port)> = self
            .firewall
            .ports
            .iter()
            .filter_map(|p| taps.iter().position(|t| *t == p.tap).map(|i| (i, p)))
            .collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, p)| p).collect()
    }
}

/// A simulated host. See the module doc.
#[derive(Default)]
pub struct SimHost {
    plans: Mutex<SimPlans>,
    /// Instances whose root disk `delete_root_disk` took.
    lost: Mutex<BTreeSet<String>>,
}

/// Where a simulated host says its files are (never touched).
const ROOT: &str = "/corral-sim";

impl SimHost {
    pub fn new() -> SimHost {
        SimHost::default()
    }

    /// A copy of what this host holds now.
    pub fn plans(&self) -> SimPlans {
        self.lock().clone()
    }

    /// Where network `network`'s (libvirt name) forwarding table sends
    /// `mac` (lowercase), if it has an entry for it: a lookup, not a copy
    /// of the plans (benchmarks poll it).
    pub fn overlay_mac(&self, network: &str, mac: &str) -> Option<Ipv4Addr> {
        let plans = self.lock();
        let overlay = plans.networks.get(network)?.overlay.as_ref()?;
        overlay.macs.get(mac).copied()
    }

    /// Deletes instance `uid`'s root disk behind the agent's back, as an
    /// operator might on a real host (the agent reports the drift).
    pub fn delete_root_disk(&self, uid: &str) {
        if let Some(i) = self.lock().instances.get_mut(uid) {
            i.root_disk = None;
        }
        self.lost().insert(uid.to_string());
    }

    fn lost(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.lost.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, SimPlans> {
        // Every write below leaves the plans whole.
        self.plans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn instance_file(uid: &str, name: &str) -> PathBuf {
        PathBuf::from(format!("{ROOT}/instances/{uid}/{name}"))
    }
}

#[async_trait]
impl super::Host for SimHost {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn blocks(&self) -> bool {
        false
    }

    fn images(&self) -> ImageSupply<'_> {
        ImageSupply::Named
    }

    fn ensure_root_disk(
        &self,
        uid: &str,
        base: &Path,
        base_format: &str,
        min_bytes: u64,
    ) -> Result<DiskSpec> {
        let mut plans = self.lock();
        let entry = plans.instances.entry(uid.to_string()).or_default();
        // As on a real host: an existing disk is never recreated.
        entry.root_disk.get_or_insert_with(|| SimDisk {
            base: base.to_path_buf(),
            base_format: base_format.to_string(),
            min_bytes,
        });
        Ok(DiskSpec {
            path: Self::instance_file(uid, "disk.qcow2"),
            format: "qcow2".into(),
            target: ROOT_DEVICE.into(),
            readonly: false,
            serial: None,
            cdrom: false,
        })
    }

    fn write_seed(&self, uid: &str, seed: &Seed) -> Result<DiskSpec> {
        let mut plans = self.lock();
        let entry = plans.instances.entry(uid.to_string()).or_default();
        if entry.seed.as_ref() != Some(seed) {
            entry.seed = Some(seed.clone());
        }
        Ok(DiskSpec {
            path: Self::instance_file(uid, "seed.iso"),
            format: "raw".into(),
            target: SEED_DEVICE.into(),
            readonly: true,
            serial: None,
            cdrom: true,
        })
    }

    fn root_disk_lost(&self, uid: &str) -> Option<String> {
        // Only what `delete_root_disk` took: a disk this host has no
        // record of was made before it (an agent restart) and is there.
        self.lost().contains(uid).then(|| {
            format!(
                "the root disk {} was deleted outside Corral",
                Self::instance_file(uid, "disk.qcow2").display()
            )
        })
    }

    fn remove_instance(&self, uid: &str) -> Result<()> {
        self.lock().instances.remove(uid);
        self.lost().remove(uid);
        Ok(())
    }

    fn instance_uids(&self) -> Result<Vec<String>> {
        Ok(self.lock().instances.keys().cloned().collect())
    }

    fn console_log(&self, _uid: &str) -> Option<PathBuf> {
        None
    }

    fn console_tail(&self, _uid: &str, _max: u64) -> Result<(Vec<u8>, u64)> {
        Ok((Vec::new(), 0))
    }

    fn console_len(&self, _uid: &str) -> u64 {
        0
    }

    fn read_for_ready(&self, _uid: &str, from: u64) -> (bool, u64) {
        (true, from)
    }

    fn volume_path(&self, uid: &str) -> PathBuf {
        PathBuf::from(format!("{ROOT}/volumes/{uid}.qcow2"))
    }

    fn snapshot_path(&self, uid: &str) -> PathBuf {
        PathBuf::from(format!("{ROOT}/snapshots/{uid}.qcow2"))
    }

    fn create_empty(&self, dest: &Path, size_bytes: u64) -> Result<()> {
        self.lock().files.insert(
            dest.to_path_buf(),
            SimFile {
                source: None,
                size_bytes,
            },
        );
        Ok(())
    }

    fn copy_image(&self, src: &Path, _src_format: &str, dest: &Path, min_bytes: u64) -> Result<()> {
        let mut plans = self.lock();
        let size = plans.files.get(src).map_or(0, |f| f.size_bytes);
        plans.files.insert(
            dest.to_path_buf(),
            SimFile {
                source: Some(src.to_path_buf()),
                size_bytes: size.max(min_bytes),
            },
        );
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        self.lock().files.remove(path);
        Ok(())
    }

    async fn virtual_size_gib(&self, path: &Path) -> Option<u32> {
        let bytes = self.lock().files.get(path)?.size_bytes;
        u32::try_from(bytes.div_ceil(1 << 30)).ok()
    }

    fn remove_networks_except(&self, keep: &[String]) -> Result<Vec<String>> {
        let mut plans = self.lock();
        let gone: Vec<String> = plans
            .networks
            .keys()
            .filter(|n| !keep.contains(n))
            .cloned()
            .collect();
        for n in &gone {
            plans.networks.remove(n);
        }
        Ok(gone)
    }

    fn sync_network(&self, n: &NetDef) -> Result<()> {
        let name = net::network_name(&n.uid);
        let mut plans = self.lock();
        // Compared before copied: a pass that changes nothing allocates
        // nothing.
        if plans.networks.get(&name) != Some(n) {
            plans.networks.insert(name, n.clone());
        }
        Ok(())
    }

    fn sync_overlays(&self, _networks: &[NetDef]) -> Result<()> {
        // Nothing more to hold: each network's tunnel and forwarding
        // table are its `NetDef::overlay`, recorded by `sync_network`.
        Ok(())
    }

    fn apply_firewall(&self, applied: Option<&NetPlan>, plan: &NetPlan) -> Result<bool> {
        let mut plans = self.lock();
        if plans.firewall != *plan {
            plans.firewall = plan.clone();
        }
        match applied {
            Some(_) => plans.firewall_applies.1 += 1,
            None => plans.firewall_applies.0 += 1,
        }
        Ok(applied.is_none())
    }

    fn sync_uplink(&self, dev: &str, addrs: &BTreeSet<Ipv4Addr>) -> Result<Vec<Ipv4Addr>> {
        let mut plans = self.lock();
        let have = plans.uplink.entry(dev.to_string()).or_default();
        let added: Vec<Ipv4Addr> = addrs.difference(have).copied().collect();
        if have != addrs {
            *have = addrs.clone();
        }
        for a in &added {
            plans.announced.push((dev.to_string(), *a));
        }
        Ok(added)
    }

    fn forget_flows(&self, addrs: &[Ipv4Addr]) -> Result<()> {
        self.lock().forgotten.extend_from_slice(addrs);
        Ok(())
    }

    fn leases(&self, bridge: &str) -> Vec<Lease> {
        // The simulated dnsmasq has handed every reservation its lease.
        let plans = self.lock();
        plans
            .networks
            .values()
            .filter(|n| n.dhcp && n.bridge() == bridge)
            .flat_map(|n| {
                n.hosts.iter().map(|(mac, (ip, _))| Lease {
                    mac: mac.clone(),
                    ip: *ip,
                })
            })
            .collect()
    }

    fn set_metadata(&self, entries: Vec<((Ipv4Addr, Ipv4Addr), InstanceMetadata)>) {
        let table = entries
            .into_iter()
            .map(|(k, md)| (k, Arc::new(md)))
            .collect();
        self.lock().metadata = table;
    }

    async fn serve_metadata(&self, _port: u16, _stop: Shutdown) {
        // Simulated guests make no requests, and many simulated hosts
        // share one process (and so one port): the table is the service.
    }
}

#[cfg(test)]
mod tests {
    use super::super::Host;
    use super::*;
    use crate::net::fixtures::{net, port};
    use corral_api_types::NetworkMode;

    #[test]
    fn plans_are_the_current_state() {
        let h = SimHost::new();
        let seed = Seed {
            instance_id: "i-1".into(),
            hostname: "web".into(),
            public_keys: vec!["ssh-ed25519 AAAA k".into()],
            user_data: b"#cloud-config\n".to_vec(),
        };
        let base = crate::host::named_image("p", "tiny");
        let root = h.ensure_root_disk("u1", &base, "qcow2", 1 << 30).unwrap();
        assert_eq!(root.target, "vda");
        assert_eq!(h.write_seed("u1", &seed).unwrap().target, "hdc");
        let lan = net(NetworkMode::Nat);
        h.sync_network(&lan).unwrap();
        let plan = NetPlan {
            networks: vec![lan.clone()],
            ports: vec![port(vec![], None)],
            metadata_port: 8775,
        };
        assert!(h.apply_firewall(None, &plan).unwrap());
        assert!(!h.apply_firewall(Some(&plan), &plan).unwrap());

        let p = h.plans();
        assert_eq!(p.instances["u1"].seed.as_ref(), Some(&seed));
        assert_eq!(p.instances["u1"].root_disk.as_ref().unwrap().base, base);
        assert_eq!(p.networks[&net::network_name(&lan.uid)], lan);
        assert_eq!(p.firewall, plan);
        assert_eq!(p.firewall_applies, (1, 1));
        // Every reservation holds its lease.
        assert_eq!(
            h.leases(&lan.bridge()),
            [Lease {
                mac: "52:54:00:00:00:01".into(),
                ip: Ipv4Addr::new(10, 42, 0, 5)
            }]
        );
        assert_eq!(h.root_disk_lost("u1"), None);
        h.delete_root_disk("u1");
        assert!(h.root_disk_lost("u1").is_some());
        // Unknown here (defined before this host was made): not lost.
        assert_eq!(h.root_disk_lost("u2"), None);

        // What goes is gone from the plans.
        h.remove_instance("u1").unwrap();
        assert_eq!(h.remove_networks_except(&[]).unwrap().len(), 1);
        let p = h.plans();
        assert!(p.instances.is_empty() && p.networks.is_empty());
        assert!(h.leases(&lan.bridge()).is_empty());
    }

    #[test]
    fn volume_files_are_recorded_with_their_source() {
        let h = SimHost::new();
        let v = h.volume_path("v1");
        h.create_empty(&v, 2 << 30).unwrap();
        let s = h.snapshot_path("s1");
        h.copy_image(&v, "qcow2", &s, 0).unwrap();
        let p = h.plans();
        assert_eq!(p.files[&s].source.as_deref(), Some(v.as_path()));
        assert_eq!(p.files[&s].size_bytes, 2 << 30);
        h.remove_file(&v).unwrap();
        assert!(!h.plans().files.contains_key(&v));
    }
}
