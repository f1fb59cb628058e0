//! One instance's convergence: the single writer of its domain and of the
//! agent's part of its status. Every wake-up source only enqueues; a
//! worker runs [`Agent::converge`] for one key at a time.
//!
//! ```text
//!   deleting ──────────────► destroy, undefine, remove its files ─► Terminating
//!   no addresses, no domain ► wait ────────────────────────────────► Provisioning
//!   no domain ─────────────► host networking pass, build, define ─┐
//!   domain ────────────────► hot-plug volumes ────────────────────┤
//!                            reboot if asked, drive the power ◄───┘
//!                            judge readiness (console), report ───► Running, Stopped, …
//! ```

use std::time::{Duration, Instant};

use corral_api_types::{ec2, Instance, InstancePhase, PowerState as Desired};
use corral_runtime::{error_chain, ObjectRef};

use super::status::{Report, CONDITION_REBOOTED};
use super::wakeups::BootWatch;
use super::{blocking, instance_path, Agent, AgentError};
use crate::api::ApiError;
use crate::host::guest_ready;
use crate::hypervisor::{domain_name, Hypervisor, PowerState};

/// Console bytes forwarded to the API (EC2 returns the last 64 KiB).
const CONSOLE_BYTES: u64 = 64 * 1024;

impl Agent {
    /// Makes the domain match the instance; returns when to look again.
    pub async fn converge(&self, key: &ObjectRef) -> Result<Option<Duration>, AgentError> {
        let Some((i, arrived)) = self.cached(key) else {
            return Ok(None);
        };
        let name = domain_name(&i.metadata.uid);
        let hv = self.hv.clone();
        let n = name.clone();
        let state = blocking(move || hv.state(&n)).await?;
        if let Some(why) = self.event_wakes.lock().expect("event wakes").remove(key) {
            tracing::info!(instance = %key, domain = %name, ?state, event = %why, "converging after a libvirt event");
        }
        if i.metadata.deletion_timestamp.is_some() {
            return self.terminate(key, &i, &name, state).await;
        }
        // MACs come from IPAM: wait for them before defining.
        let addressed = i.status.as_ref().is_some_and(|s| {
            s.addresses.len() == i.spec.nics.len() && s.addresses.iter().all(|a| !a.mac.is_empty())
        });
        if !addressed && state.is_none() {
            let r = Report::unprovisioned(
                InstancePhase::Provisioning,
                "WaitingForNetwork",
                "waiting for network addresses",
            );
            self.report(key, r).await?;
            return Ok(None);
        }
        let drift = state.and_then(|_| self.on_host().root_disk_lost(&i.metadata.uid));
        match state {
            None => {
                if let Some(again) = self.define(key, &i, arrived).await? {
                    return Ok(Some(again));
                }
            }
            Some(_) => self.sync_volumes(&i, &name).await?,
        }
        // A reboot asked for (EC2 RebootInstances, `corral reboot`).
        let reboot = i
            .metadata
            .annotations
            .get(ec2::REBOOT_ANNOTATION)
            .filter(|want| {
                !i.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == CONDITION_REBOOTED && &c.message == *want)
                })
            })
            .cloned();
        // A boot is about to start: readiness is judged on what follows.
        let boots = matches!(
            (&reboot, state, i.spec.power_state),
            (Some(_), Some(PowerState::Running), _)
                | (
                    _,
                    None | Some(PowerState::Shutoff | PowerState::Crashed),
                    Desired::Running
                )
        );
        if boots {
            self.mark_boot(&i).await;
        }
        if let (Some(want), Some(PowerState::Running)) = (&reboot, state) {
            let hv = self.hv.clone();
            let n = name.clone();
            blocking(move || hv.reboot(&n)).await?;
            self.consoles.lock().expect("consoles").remove(&name);
            self.mark_rebooted(key, want).await?;
        }
        let hv = self.hv.clone();
        let n = name.clone();
        let desired = i.spec.power_state;
        let timeout = self.opts.stop_timeout;
        let t1 = Instant::now();
        let observed = blocking(move || converge_power(hv.as_ref(), &n, desired, timeout)).await?;
        if boots {
            tracing::debug!(
                instance = %key,
                power_ms = t1.elapsed().as_millis() as u64,
                ?observed,
                "power converged for a boot"
            );
        }
        self.observe(key, &i, &name, observed, drift.as_deref())
            .await
    }

    /// A deleted instance: its domain and files go, then its status says so.
    async fn terminate(
        &self,
        key: &ObjectRef,
        i: &Instance,
        name: &str,
        state: Option<PowerState>,
    ) -> Result<Option<Duration>, AgentError> {
        self.booting.lock().expect("booting").remove(key);
        if state.is_some() {
            let hv = self.hv.clone();
            let n = name.to_string();
            blocking(move || {
                hv.destroy(&n)?;
                hv.undefine(&n)
            })
            .await?;
        }
        let uid = i.metadata.uid.clone();
        let console = self.on_host().console_log(&uid).is_some();
        self.host_call(move |h| h.remove_instance(&uid)).await?;
        if console {
            self.consoles.lock().expect("consoles").remove(name);
            match self
                .api
                .delete(&format!("{}/console", instance_path(key)))
                .await
            {
                Ok(()) | Err(ApiError::Status { code: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let r = Report::unprovisioned(
            InstancePhase::Terminating,
            "Destroyed",
            "the domain is destroyed and undefined",
        );
        self.report(key, r).await?;
        Ok(None)
    }

    /// Defines the domain of an instance that has none. `Some`: it cannot
    /// be yet (the status says why); look again then. `arrived`: the host
    /// networking request its copy made.
    async fn define(
        &self,
        key: &ObjectRef,
        i: &Instance,
        arrived: u64,
    ) -> Result<Option<Duration>, AgentError> {
        let t0 = Instant::now();
        // The guest's network, DHCP reservation and rules exist before it
        // boots (a pass that saw this copy); what that pass read builds
        // the domain.
        let objects = self.sync_net_since(arrived).await?;
        let planned = t0.elapsed();
        let spec = match self.domain_spec(i, objects.as_ref().clone()).await? {
            Ok(spec) => spec,
            Err(wait) => {
                let r =
                    Report::unprovisioned(InstancePhase::Provisioning, wait.reason, &wait.message);
                self.report(key, r).await?;
                return Ok(Some(Duration::from_secs(5)));
            }
        };
        let specified = t0.elapsed();
        if let Some(why) = self.network_failure(i).await {
            let r = Report::unprovisioned(InstancePhase::Provisioning, "NetworkUnavailable", &why);
            self.report(key, r).await?;
            return Ok(Some(Duration::from_secs(5)));
        }
        let hv = self.hv.clone();
        blocking(move || hv.define(&spec)).await?;
        tracing::debug!(
            instance = %key,
            network_ms = planned.as_millis() as u64,
            spec_ms = (specified - planned).as_millis() as u64,
            define_ms = (t0.elapsed() - specified).as_millis() as u64,
            "domain defined"
        );
        Ok(None)
    }

    /// Reports what the domain turned out to be. A running guest with a
    /// console is Ready once it has printed its ready line since its last
    /// boot (the boot watcher wakes us when it does); its console is
    /// forwarded to the API. Answers when to look again.
    async fn observe(
        &self,
        key: &ObjectRef,
        i: &Instance,
        name: &str,
        observed: PowerState,
        drift: Option<&str>,
    ) -> Result<Option<Duration>, AgentError> {
        let (phase, mut ready, mut reason) = match observed {
            PowerState::Running => (InstancePhase::Running, true, "Running"),
            PowerState::Paused => (InstancePhase::Paused, false, "Paused"),
            PowerState::Saved => (InstancePhase::Suspended, false, "Suspended"),
            PowerState::Shutoff => (InstancePhase::Stopped, false, "Stopped"),
            PowerState::Crashed => (InstancePhase::Failed, false, "Crashed"),
            // No state libvirt can name (NOSTATE while it reconnects to its
            // QEMUs after a restart, or a transition in flight): what the
            // status says stays until a state is known — a running guest
            // is not reported as Provisioning for it.
            PowerState::Other => {
                tracing::debug!(instance = %key, domain = name, "no known power state yet");
                return Ok(Some(Duration::from_secs(1)));
            }
        };
        let mut again = None;
        let lease = match observed {
            PowerState::Running => self.lease_state(i).await,
            _ => None,
        };
        if self.on_host().console_log(&i.metadata.uid).is_some() {
            let uid = i.metadata.uid.clone();
            let (tail, start) = self
                .host_call(move |h| h.console_tail(&uid, CONSOLE_BYTES))
                .await?;
            self.sync_console(key, name, &tail).await;
            if observed == PowerState::Running {
                let len = start + tail.len() as u64;
                let mark = self
                    .boot_marks
                    .lock()
                    .expect("boot marks")
                    .get(name)
                    .copied()
                    .filter(|m| *m <= len) // virtlogd rotated the log
                    .unwrap_or(0);
                let since = &tail[(mark.saturating_sub(start) as usize).min(tail.len())..];
                ready = guest_ready(since);
                reason = if ready { "GuestBooted" } else { "Booting" };
                // The boot watcher wakes us when the guest is ready; the
                // console is forwarded every second while it boots and
                // every few seconds once it has.
                let mut booting = self.booting.lock().expect("booting");
                if ready {
                    booting.remove(key);
                } else if !booting.contains_key(key) {
                    booting.insert(
                        key.clone(),
                        BootWatch {
                            uid: i.metadata.uid.clone(),
                            // All before was searched just now.
                            read: len,
                        },
                    );
                    self.boot_started.notify_one();
                }
                again = Some(if ready {
                    Duration::from_secs(3)
                } else {
                    Duration::from_secs(1)
                });
            } else {
                self.booting.lock().expect("booting").remove(key);
            }
        }
        self.report(
            key,
            Report {
                phase,
                provisioned: true,
                reason: "Defined",
                message: "",
                ready: Some((ready, reason)),
                drift,
                lease: lease
                    .as_ref()
                    .map(|(ok, why, msg)| (*ok, *why, msg.as_str())),
            },
        )
        .await?;
        Ok(again)
    }

    /// Remembers where the console log ends before a boot (a guest
    /// without one has nothing to mark).
    async fn mark_boot(&self, i: &Instance) {
        let host = self.on_host().clone();
        let uid = i.metadata.uid.clone();
        if host.console_log(&uid).is_none() {
            return;
        }
        let len = tokio::task::spawn_blocking(move || host.console_len(&uid))
            .await
            .unwrap_or(0);
        self.boot_marks
            .lock()
            .expect("boot marks")
            .insert(domain_name(&i.metadata.uid), len);
    }

    /// Sends the console's newest bytes to the API when they changed.
    async fn sync_console(&self, key: &ObjectRef, name: &str, tail: &[u8]) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tail.hash(&mut h);
        let h = h.finish();
        if self.consoles.lock().expect("consoles").get(name) == Some(&h) {
            return;
        }
        match self
            .api
            .put_bytes(&format!("{}/console", instance_path(key)), tail.to_vec())
            .await
        {
            Ok(()) => {
                self.consoles
                    .lock()
                    .expect("consoles")
                    .insert(name.to_string(), h);
            }
            Err(e) => {
                tracing::warn!(instance = %key, error = %error_chain(&e), "sending the console failed")
            }
        }
    }
}

/// Drives one domain towards `desired`; returns what it is afterwards.
fn converge_power(
    hv: &dyn Hypervisor,
    name: &str,
    desired: Desired,
    stop_timeout: Duration,
) -> crate::hypervisor::Result<PowerState> {
    let state = hv.state(name)?.unwrap_or(PowerState::Shutoff);
    if !matches!(
        (desired, state),
        (Desired::Running, PowerState::Running)
            | (Desired::Stopped, PowerState::Shutoff | PowerState::Saved)
            | (Desired::Paused, PowerState::Paused)
            | (Desired::Suspended, PowerState::Saved | PowerState::Shutoff)
    ) {
        tracing::info!(domain = name, ?state, ?desired, "changing the power state");
    }
    match (desired, state) {
        (Desired::Running, PowerState::Running) => {}
        (Desired::Running, PowerState::Paused) => hv.resume(name)?,
        (Desired::Running, PowerState::Crashed) => {
            hv.destroy(name)?;
            hv.start(name)?;
        }
        (Desired::Running, _) => hv.start(name)?,
        (Desired::Stopped, PowerState::Running | PowerState::Paused) => {
            if state == PowerState::Paused {
                hv.resume(name)?;
            }
            hv.shutdown(name)?;
            let deadline = std::time::Instant::now() + stop_timeout;
            while hv.state(name)? == Some(PowerState::Running)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(250));
            }
            if hv.state(name)? != Some(PowerState::Shutoff) {
                hv.destroy(name)?;
            }
        }
        (Desired::Stopped, _) => {}
        (Desired::Paused, PowerState::Running) => hv.pause(name)?,
        (Desired::Paused, PowerState::Shutoff | PowerState::Saved) => {
            hv.start(name)?;
            hv.pause(name)?;
        }
        (Desired::Paused, _) => {}
        (Desired::Suspended, PowerState::Running | PowerState::Paused) => hv.save(name)?,
        (Desired::Suspended, _) => {}
    }
    Ok(hv.state(name)?.unwrap_or(PowerState::Shutoff))
}
