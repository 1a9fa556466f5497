//! Binding without `take_over` is exclusive even when two servers start at
//! the same instant: the check that no socket listens on the address and
//! the bind happen under one lock, so of two binds racing for a port,
//! exactly one gets it and the other fails with `AddressInUse`, on every
//! backend. (Without the lock both passed the check, then both bound into
//! one `SO_REUSEPORT` group: one served every connection, the other none.)

mod util;

use std::{
    net::SocketAddr,
    sync::{Arc, Barrier},
};

use balancer::{Backend, BindError, Builder};
use rstest_reuse::{self, apply};
use util::every_backend;

/// Races for one port, each a fresh port.
const ROUNDS: usize = 20;

#[apply(every_backend)]
fn two_servers_binding_one_port_at_once_never_both_bind(backend: Backend) {
    util::skip_unless_runnable!(backend);
    for round in 0..ROUNDS {
        let addr: SocketAddr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let start = Arc::new(Barrier::new(2));
        let servers: Vec<_> = (0..2)
            .map(|_| {
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    Builder::new(backend).workers(2).listen(addr).bind()
                })
            })
            .collect();
        let results: Vec<_> = servers.into_iter().map(|s| s.join().unwrap()).collect();
        let bound = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(bound, 1, "{backend}, round {round}: {results:?}");
        let refused = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(
            matches!(refused, BindError::AddressInUse { addr: at, .. } if *at == addr),
            "{backend}: {refused:?}"
        );
    }
}
