//! Connections a floating address no longer carries are forgotten: when
//! an address leaves its guest (disassociated, moved to another guest or
//! node, or the guest gone), the kernel's connection tracking still holds
//! the flows DNATed to the old guest, and would keep sending their
//! packets there until they time out (days, for an idle established TCP
//! flow). Each such address's flows are deleted with `conntrack -D`, both
//! those addressed to it (DNAT) and those answered to it (a guest's own
//! connections SNATed to it), after the new firewall is in place.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::command::{run, Failure};
use super::{NetPlan, Shell};

/// A failed `conntrack` run: its command line and why.
#[derive(Debug, thiserror::Error)]
#[error("{cmd}: {message}")]
pub struct ConntrackError {
    pub cmd: String,
    pub message: String,
}

/// The floating addresses `old` mapped to a guest that `new` no longer
/// maps to that same guest (by guest address and tap).
pub fn released_floating(old: &NetPlan, new: &NetPlan) -> Vec<Ipv4Addr> {
    let pairs = |p: &NetPlan| -> BTreeSet<(Ipv4Addr, Ipv4Addr, String)> {
        p.ports
            .iter()
            .filter_map(|port| Some((port.floating_ip?, port.ip, port.tap.clone())))
            .collect()
    };
    let now = pairs(new);
    let gone: BTreeSet<Ipv4Addr> = pairs(old).difference(&now).map(|(fip, ..)| *fip).collect();
    gone.into_iter().collect()
}

/// Deletes every tracked flow to or answered to `addr`. Finding none is
/// no failure.
pub fn forget_flows(sh: &Shell, addr: Ipv4Addr) -> Result<(), ConntrackError> {
    let a = addr.to_string();
    // --orig-dst: flows addressed to it; --reply-dst: flows SNATed to it.
    for which in ["--orig-dst", "--reply-dst"] {
        match run(sh.netns(), "conntrack", &["-D", which, &a], None) {
            Ok(_) => {}
            // conntrack exits 1 when nothing matched.
            Err(e) if matches!(&e.failure, Failure::Exit(s) if s.contains("0 flow entries")) => {}
            Err(e) => {
                return Err(ConntrackError {
                    cmd: e.cmd,
                    message: match e.failure {
                        Failure::Spawn(s) => s.to_string(),
                        Failure::Exit(s) => s,
                    },
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Port;

    fn port(tap: &str, ip: [u8; 4], fip: Option<[u8; 4]>) -> Port {
        Port {
            display: tap.into(),
            tap: tap.into(),
            network: "n".into(),
            ip: ip.into(),
            mac: "52:54:00:00:00:01".into(),
            ingress: vec![],
            egress: None,
            floating_ip: fip.map(Ipv4Addr::from),
        }
    }

    fn plan(ports: Vec<Port>) -> NetPlan {
        NetPlan {
            ports,
            ..Default::default()
        }
    }

    #[test]
    fn an_address_that_left_or_moved_is_released() {
        let a = port("tapa", [10, 0, 0, 2], Some([172, 24, 4, 5]));
        let b = port("tapb", [10, 0, 0, 3], None);
        let before = plan(vec![a.clone(), b.clone()]);
        // Unchanged: nothing.
        assert!(released_floating(&before, &before).is_empty());
        // Disassociated, or the guest gone.
        let after = plan(vec![port("tapa", [10, 0, 0, 2], None), b.clone()]);
        assert_eq!(
            released_floating(&before, &after),
            [Ipv4Addr::new(172, 24, 4, 5)]
        );
        assert_eq!(
            released_floating(&before, &plan(vec![b])),
            [Ipv4Addr::new(172, 24, 4, 5)]
        );
        // Moved to another guest here.
        let moved = plan(vec![
            port("tapa", [10, 0, 0, 2], None),
            port("tapb", [10, 0, 0, 3], Some([172, 24, 4, 5])),
        ]);
        assert_eq!(
            released_floating(&before, &moved),
            [Ipv4Addr::new(172, 24, 4, 5)]
        );
        // A new association releases nothing.
        assert!(released_floating(&after, &before).is_empty());
        assert!(released_floating(&plan(vec![]), &before).is_empty());
        let _ = a;
    }
}
