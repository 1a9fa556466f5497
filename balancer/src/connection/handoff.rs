//! Hand-off routing: every listener of a set with its role, and where a
//! connection accepted on a *virtual* listener is attributed: to the handoff
//! target registered for its original destination (Envoy's
//! `use_original_dst`). A hand-off moves a connection's attribution between
//! listeners, never the connection between workers (that is a *transfer*,
//! `worker/transfer.rs`).

use std::{net::SocketAddr, os::fd::AsFd};

use super::Incoming;
use crate::{listener::ListenerId, original_dst};

/// What a listener does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Bound; connections are attributed to it.
    Plain,
    /// Bound; hands each connection off to the target matching its original
    /// destination.
    Virtual,
    /// Not bound; receives connections from virtual listeners.
    Target,
    /// Bound, and receives connections from virtual listeners whose
    /// original destination is its address.
    BoundTarget,
}

impl Role {
    /// Whether virtual listeners hand connections to it.
    pub(crate) fn is_target(self) -> bool {
        matches!(self, Self::Target | Self::BoundTarget)
    }
}

/// A listener: its address (bound, or a target's configured one) and role.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenerSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) role: Role,
}

/// Every listener of one balanced listener set, in [`ListenerId`] order.
#[derive(Debug)]
pub(crate) struct Listeners(Vec<ListenerSpec>);

impl Listeners {
    pub(crate) fn new(specs: Vec<ListenerSpec>) -> Self {
        Self(specs)
    }

    /// Listener `id`'s address, if there is such a listener.
    pub(crate) fn addr(&self, id: ListenerId) -> Option<SocketAddr> {
        self.0.get(id.index()).map(|l| l.addr)
    }

    /// Every listener's id and address.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ListenerId, SocketAddr)> + '_ {
        (self.0.iter().enumerate()).map(|(i, l)| (ListenerId(i), l.addr))
    }

    /// A connection `listener` just accepted, not yet counted. For a virtual
    /// listener this reads its original destination (one `getsockopt`).
    pub(crate) fn incoming<S: AsFd>(
        &self,
        stream: S,
        peer: SocketAddr,
        listener: ListenerId,
    ) -> Incoming<S> {
        let original_dst = match self.0[listener.index()].role {
            Role::Virtual => original_dst::original_destination(&stream).ok(),
            Role::Plain | Role::Target | Role::BoundTarget => None,
        };
        Incoming {
            stream,
            peer,
            listener,
            original_dst,
        }
    }

    /// The handoff target for a connection whose original destination is
    /// `dst`: an exact address match before a wildcard one.
    pub(crate) fn route(&self, dst: SocketAddr) -> Option<ListenerId> {
        let targets = || {
            (self.0.iter().enumerate())
                .filter(|(_, l)| l.role.is_target() && matches(l.addr, dst))
                .map(|(i, l)| (ListenerId(i), l.addr))
        };
        let exact = targets().find(|(_, addr)| addr.ip() == dst.ip());
        exact.or_else(|| targets().next()).map(|(id, _)| id)
    }
}

/// Whether a handoff target registered at `target` should receive a
/// connection whose original destination was `dst`: same port, and the same
/// IP or a wildcard IP (`0.0.0.0`, `::`) of the same family.
fn matches(target: SocketAddr, dst: SocketAddr) -> bool {
    target.port() == dst.port()
        && target.is_ipv4() == dst.is_ipv4()
        && (target.ip().is_unspecified() || target.ip() == dst.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str, role: Role) -> ListenerSpec {
        ListenerSpec {
            addr: addr.parse().unwrap(),
            role,
        }
    }

    #[test]
    fn wildcard_matches_any_ip_of_its_family_on_its_port() {
        let m = |t: &str, d: &str| matches(t.parse().unwrap(), d.parse().unwrap());
        assert!(m("0.0.0.0:8080", "10.1.2.3:8080"));
        assert!(m("10.1.2.3:8080", "10.1.2.3:8080"));
        assert!(!m("10.1.2.4:8080", "10.1.2.3:8080"));
        assert!(!m("0.0.0.0:8081", "10.1.2.3:8080"));
        assert!(!m("[::]:8080", "10.1.2.3:8080"));
        assert!(m("[::]:8080", "[::1]:8080"));
    }

    #[test]
    fn an_exact_target_wins_over_a_wildcard_and_plain_listeners_never_match() {
        let listeners = Listeners::new(vec![
            spec("127.0.0.1:15001", Role::Virtual),
            spec("0.0.0.0:8080", Role::Target),
            spec("10.0.0.5:8080", Role::Target),
            spec("10.0.0.6:9090", Role::Plain),
            spec("10.0.0.7:7070", Role::BoundTarget),
        ]);
        let route = |dst: &str| listeners.route(dst.parse().unwrap()).map(ListenerId::index);
        assert_eq!(route("10.0.0.5:8080"), Some(2));
        assert_eq!(route("10.0.0.7:8080"), Some(1));
        assert_eq!(route("10.0.0.6:9090"), None);
        assert_eq!(route("10.0.0.7:7070"), Some(4));
    }
}
