//! [`RealHost`]: a hypervisor host as the agent finds it. Its files
//! ([`HostFiles`] under the state directory), its libvirt networks
//! (through the hypervisor, which owns the libvirt connection), its
//! iptables and ip6tables, its dnsmasq leases and the metadata listener.
//!
//! It only carries out what the agent asks; it must not read the API or
//! decide what should exist.

use std::any::Any;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use corral_runtime::Shutdown;

use super::{console, HostFiles, ImageSupply, Result, Seed, ROOT_DEVICE, SEED_DEVICE};
use crate::hypervisor::{DiskSpec, Hypervisor};
use crate::metadata::{InstanceMetadata, MetadataTable};
use crate::net::{self, Lease, NetDef, NetPlan};

pub struct RealHost {
    files: HostFiles,
    hv: Arc<dyn Hypervisor>,
    metadata: MetadataTable,
}

impl RealHost {
    /// The host whose files are under `state_dir` (made if missing) and
    /// whose libvirt networks `hv` reaches. Blocking.
    pub fn open(state_dir: &Path, hv: Arc<dyn Hypervisor>) -> Result<RealHost> {
        Ok(RealHost {
            files: HostFiles::open(state_dir)?,
            hv,
            metadata: MetadataTable::new(),
        })
    }

    pub fn files(&self) -> &HostFiles {
        &self.files
    }

    /// Who is who for the metadata service.
    pub fn metadata(&self) -> &MetadataTable {
        &self.metadata
    }
}

#[async_trait]
impl super::Host for RealHost {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn images(&self) -> ImageSupply<'_> {
        ImageSupply::Cache(self.files.images())
    }

    fn ensure_root_disk(
        &self,
        uid: &str,
        base: &Path,
        base_format: &str,
        min_bytes: u64,
    ) -> Result<DiskSpec> {
        self.files
            .ensure_root_disk(uid, base, base_format, min_bytes)?;
        Ok(DiskSpec {
            path: self.files.root_disk(uid),
            format: "qcow2".into(),
            target: ROOT_DEVICE.into(),
            readonly: false,
            serial: None,
            cdrom: false,
        })
    }

    fn write_seed(&self, uid: &str, seed: &Seed) -> Result<DiskSpec> {
        self.files.write_seed(uid, seed)?;
        Ok(DiskSpec {
            path: self.files.seed_path(uid),
            format: "raw".into(),
            target: SEED_DEVICE.into(),
            readonly: true,
            serial: None,
            cdrom: true,
        })
    }

    fn root_disk_lost(&self, uid: &str) -> Option<String> {
        let disk = self.files.root_disk(uid);
        (!disk.exists()).then(|| {
            format!(
                "the root disk {} was deleted outside Corral",
                disk.display()
            )
        })
    }

    fn remove_instance(&self, uid: &str) -> Result<()> {
        self.files.remove_instance(uid)
    }

    fn instance_uids(&self) -> Result<Vec<String>> {
        self.files.instance_uids()
    }

    fn console_log(&self, uid: &str) -> Option<PathBuf> {
        Some(self.files.console_log(uid))
    }

    fn console_tail(&self, uid: &str, max: u64) -> Result<(Vec<u8>, u64)> {
        self.files.console_tail(uid, max)
    }

    fn console_len(&self, uid: &str) -> u64 {
        console::console_len(&self.files.console_log(uid))
    }

    fn read_for_ready(&self, uid: &str, from: u64) -> (bool, u64) {
        console::read_for_ready(&self.files.console_log(uid), from)
    }

    fn volume_path(&self, uid: &str) -> PathBuf {
        self.files.volume_path(uid)
    }

    fn snapshot_path(&self, uid: &str) -> PathBuf {
        self.files.snapshot_path(uid)
    }

    fn create_empty(&self, dest: &Path, size_bytes: u64) -> Result<()> {
        self.files.create_empty(dest, size_bytes)
    }

    fn copy_image(&self, src: &Path, src_format: &str, dest: &Path, min_bytes: u64) -> Result<()> {
        self.files.copy_image(src, src_format, dest, min_bytes)
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        self.files.remove_file(path)
    }

    async fn virtual_size_gib(&self, path: &Path) -> Option<u32> {
        let out = tokio::process::Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(path)
            .output()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let bytes = v["virtual-size"].as_u64()?;
        u32::try_from(bytes.div_ceil(1 << 30)).ok()
    }

    fn remove_networks_except(&self, keep: &[String]) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in self.hv.networks()? {
            if !keep.contains(&name) {
                self.hv.remove_network(&name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    fn sync_network(&self, n: &NetDef) -> Result<()> {
        let hosts: Vec<(String, String)> = n
            .hosts
            .iter()
            .map(|(mac, (ip, host))| (mac.clone(), NetDef::host_xml(mac, *ip, host)))
            .collect();
        self.hv
            .sync_network(&net::network_name(&n.uid), &n.libvirt_xml(), &hosts)?;
        Ok(())
    }

    fn sync_overlays(&self, networks: &[NetDef]) -> Result<()> {
        let sh = net::Shell::host();
        let mut tunnels = Vec::new();
        for n in networks {
            let Some(o) = &n.overlay else { continue };
            let tunnel = net::Overlay {
                device: net::vxlan_name(&n.uid),
                bridge: n.bridge(),
                vni: o.vni,
                local: o.local,
                port: o.port,
                underlay: None,
                mtu: o.mtu,
                gateway: n.gateway,
            };
            net::ensure_overlay(&sh, &tunnel)?;
            let fdb = net::Fdb {
                flood: o.flood.clone(),
                macs: o.macs.clone(),
            };
            net::sync_fdb(&sh, &tunnel.device, &fdb)?;
            tunnels.push(tunnel);
        }
        let keep: Vec<String> = tunnels.iter().map(|t| t.device.clone()).collect();
        // Each removal is logged where it is made.
        net::remove_overlays_except(&sh, &keep)?;
        match net::guard_tunnel(&sh, &tunnels) {
            // A host without ebtables has no guard to take down.
            Err(net::VxlanError::Spawn { source, .. })
                if tunnels.is_empty() && source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            r => Ok(r?),
        }
    }

    /// Both families, iptables and ip6tables, every time: one lifecycle.
    fn apply_firewall(&self, applied: Option<&NetPlan>, plan: &NetPlan) -> Result<bool> {
        let sh = net::Shell::host();
        Ok(match applied {
            Some(prev) => net::update_firewall(&sh, prev, plan)?,
            None => net::apply_firewall(&sh, plan).map(|()| true)?,
        })
    }

    fn sync_uplink(&self, dev: &str, addrs: &BTreeSet<Ipv4Addr>) -> Result<Vec<Ipv4Addr>> {
        let sh = net::Shell::host();
        let change = net::sync_uplink(&sh, dev, addrs)?;
        for a in &change.removed {
            tracing::info!(uplink = dev, address = %a, "floating address left the uplink");
        }
        for a in &change.added {
            tracing::info!(uplink = dev, address = %a, "floating address on the uplink, announced");
            net::announce(&sh, dev, *a);
        }
        Ok(change.added)
    }

    fn forget_flows(&self, addrs: &[Ipv4Addr]) -> Result<()> {
        let sh = net::Shell::host();
        for a in addrs {
            net::forget_flows(&sh, *a)?;
            tracing::info!(address = %a, "floating address released: its tracked flows forgotten");
        }
        Ok(())
    }

    fn leases(&self, bridge: &str) -> Vec<Lease> {
        net::leases(bridge)
    }

    fn set_metadata(&self, entries: Vec<((Ipv4Addr, Ipv4Addr), InstanceMetadata)>) {
        self.metadata.set(entries);
    }

    async fn serve_metadata(&self, port: u16, mut stop: Shutdown) {
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot serve instance metadata");
                return;
            }
        };
        tracing::info!(%addr, "serving instance metadata");
        let done = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = crate::metadata::serve(listener, self.metadata.clone(), done).await {
            tracing::error!(error = %e, "metadata service stopped");
        }
    }
}
