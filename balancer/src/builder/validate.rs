//! Checks a [`Builder`]'s configuration before anything is bound: the
//! worker count and limit, the eBPF slots, at least one listener, addresses a TCP listener
//! can use and no two alike, handoff targets a virtual listener can receive.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{error::BindError, Builder};
use crate::{
    backend::{Backend, LoadMeasure},
    connection::Role,
};

impl Builder {
    pub(super) fn validate(&self, addrs: &[Vec<SocketAddr>]) -> Result<(), BindError> {
        let max = self.backend.max_workers();
        if self.workers == 0 {
            return Err(BindError::NoWorkers);
        }
        if self.workers > max {
            let (workers, backend) = (self.workers, self.backend);
            return Err(BindError::TooManyWorkers {
                workers,
                backend,
                max,
            });
        }
        if self.listeners.iter().all(|l| l.role == Role::Target) {
            return Err(BindError::NoListeners);
        }
        if self.max_connections == Some(0) {
            return Err(BindError::ZeroMaxConnections);
        }
        if self.steering.cpu_locality {
            let reason = if self.backend != Backend::Ebpf {
                "it needs the ebpf backend, whose program chooses by CPU"
            } else if !self.pin_to_cores {
                "it needs pinned workers: add pin_to_cores(true)"
            } else {
                ""
            };
            if !reason.is_empty() {
                return Err(BindError::CpuLocality { reason });
            }
        }
        if self.measure != LoadMeasure::default()
            && !matches!(self.backend, Backend::Exact | Backend::Ebpf)
        {
            return Err(BindError::BalanceOn {
                measure: self.measure,
                backend: self.backend,
            });
        }
        if let Some(slots) = self.steering.slots {
            if self.backend != Backend::Ebpf {
                return Err(BindError::EbpfOnly {
                    option: "ebpf_slots",
                    backend: self.backend,
                });
            }
            let max = Backend::Ebpf.max_workers();
            if slots < self.workers || slots > max {
                let workers = self.workers;
                return Err(BindError::EbpfSlots {
                    slots,
                    workers,
                    max,
                });
            }
        }
        for (i, (requested, candidates)) in self.listeners.iter().zip(addrs).enumerate() {
            for &addr in candidates {
                check_address(addr, requested.role)?;
                let earlier = addrs[..i].iter().flatten();
                if addr.port() != 0 && earlier.clone().any(|&a| a == addr) {
                    return Err(BindError::DuplicateListener { addr });
                }
            }
        }
        let virtuals: Vec<_> = self.with_role(Role::Virtual, addrs).collect();
        let targets =
            (self.with_role(Role::Target, addrs)).chain(self.with_role(Role::BoundTarget, addrs));
        for target in targets.collect::<Vec<_>>() {
            if virtuals.is_empty() {
                return Err(BindError::TargetWithoutVirtual { target });
            }
            let only_v6 = self.socket.only_v6;
            let unreachable = virtuals.iter().find(|v| !can_receive(**v, target, only_v6));
            if let Some(&virtual_listener) = unreachable {
                return Err(BindError::FamilyMismatch {
                    target,
                    virtual_listener,
                });
            }
        }
        Ok(())
    }

    /// The first address of each listener with `role`.
    fn with_role<'a>(
        &'a self,
        role: Role,
        addrs: &'a [Vec<SocketAddr>],
    ) -> impl Iterator<Item = SocketAddr> + 'a {
        (self.listeners.iter().zip(addrs))
            .filter(move |(l, _)| l.role == role)
            .map(|(_, candidates)| candidates[0])
    }
}

/// Rejects addresses no TCP listener can accept on: multicast and broadcast
/// addresses, and a handoff target on port 0 (no original destination has
/// port 0).
fn check_address(addr: SocketAddr, role: Role) -> Result<(), BindError> {
    let reason = if addr.ip().is_multicast() {
        "a multicast address cannot accept TCP connections"
    } else if addr.ip() == Ipv4Addr::BROADCAST {
        "the broadcast address cannot accept TCP connections"
    } else if role.is_target() && addr.port() == 0 {
        "a handoff target needs a port: it matches original destinations"
    } else {
        return Ok(());
    };
    Err(BindError::InvalidAddress { addr, reason })
}

/// Whether a virtual listener at `virtual_listener` can accept connections
/// whose original destination `target` matches: of the same family, or IPv4
/// ones on a dual-stack `[::]` (unless `only_v6`).
fn can_receive(virtual_listener: SocketAddr, target: SocketAddr, only_v6: bool) -> bool {
    let dual_stack = !only_v6 && virtual_listener.ip() == Ipv6Addr::UNSPECIFIED;
    virtual_listener.is_ipv4() == target.is_ipv4() || (dual_stack && target.is_ipv4())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_virtual_listener_can_hand_to_ipv4_targets() {
        let can = |v: &str, t: &str, only_v6| {
            can_receive(v.parse().unwrap(), t.parse().unwrap(), only_v6)
        };
        assert!(can("[::]:15001", "0.0.0.0:8080", false));
        assert!(!can("[::]:15001", "0.0.0.0:8080", true));
        assert!(!can("[::1]:15001", "0.0.0.0:8080", false));
        assert!(!can("127.0.0.1:15001", "[::]:8080", false));
        assert!(can("[::1]:15001", "[::]:8080", true));
    }
}
