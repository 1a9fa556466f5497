//! Original-destination handoff through iptables REDIRECT, in a network
//! namespace each test creates. Needs root.

mod util;

use std::net::SocketAddr;

use balancer::{Backend, Builder};
use balancer_testkit::in_new_netns;
use rstest_reuse::{self, apply};
use util::least_loaded_backends;
use util::{
    counts::{expect_active, spread},
    echo::{EchoServer, Guard},
    privileged,
};

const CONNECTIONS: usize = 40;
const WORKERS: usize = 2;

/// In a fresh namespace: connections to 127.0.0.1:8080 are redirected to the
/// virtual listener on 15001, which hands them to the `0.0.0.0_8080` target.
fn redirected_server(backend: Backend, guard: Guard) -> EchoServer {
    balancer_testkit::redirect(8080, 15001).expect("iptables REDIRECT (run scripts/setup)");
    // Counts alone (`util::counting`): the released-counter test shows
    // what counting sees, not what the busy weight makes of it.
    let builder = util::counting(Builder::new(backend).workers(WORKERS), backend)
        .listen_virtual("127.0.0.1:15001")
        .handoff_target("0.0.0.0:8080");
    EchoServer::start(util::bind(builder, backend), guard)
}

#[apply(least_loaded_backends)]
fn redirected_connections_reach_the_target_and_stay_balanced(backend: Backend) {
    if !privileged("the original-destination test (netns, iptables)") {
        return;
    }
    in_new_netns(move || {
        let server = redirected_server(backend, Guard::Keep);
        let dst: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let clients: Vec<_> = server.open_many(dst, CONNECTIONS);
        for client in &clients {
            let served = server.served(client);
            assert_eq!(served.original_dst, Some(dst));
            assert_eq!(
                served.listener.index(),
                1,
                "handed to the 0.0.0.0_8080 target"
            );
        }
        let snapshot = server.stats.snapshot();
        let per_worker = snapshot.active_per_worker();
        println!("{backend}: redirected split {per_worker:?}");
        assert!(spread(&per_worker) <= 1, "{per_worker:?}");
        let [virtual_listener, target] = &snapshot.listeners[..] else {
            panic!("{snapshot:?}")
        };
        assert_eq!(target.name, "0.0.0.0_8080");
        assert_eq!(target.total().downstream_cx_active, CONNECTIONS as u64);
        assert_eq!(virtual_listener.total().downstream_cx_active, 0);
        assert_eq!(
            virtual_listener.total().downstream_cx_total,
            CONNECTIONS as u64
        );
        let text = snapshot.to_envoy_text();
        let half = CONNECTIONS / WORKERS;
        assert!(
            text.contains(&format!(
                "listener.0.0.0.0_8080.worker_0.downstream_cx_active: {half}\n"
            )),
            "{text}"
        );
        drop(clients);
        expect_active(&server.stats, 0, "all closed");
    });
}

/// The same scenario with Envoy's old counter: released at the handoff. The
/// exact balancer then sees every worker idle and piles all connections on
/// worker 0, which is what the test above would catch.
#[test]
fn a_counter_released_at_handoff_piles_connections_on_one_worker() {
    if !privileged("the original-destination test (netns, iptables)") {
        return;
    }
    in_new_netns(|| {
        let server = redirected_server(Backend::Exact, Guard::DropAtHandoff);
        let dst: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let clients: Vec<_> = server.open_many(dst, CONNECTIONS);
        let split = server.split(&clients, WORKERS);
        println!("exact with a released counter: split {split:?}");
        assert_eq!(split, [CONNECTIONS, 0]);
        assert_eq!(
            server.stats.snapshot().active_per_worker(),
            [0, 0],
            "the balancer saw zeros"
        );
    });
}

/// A virtual listener on `[::]` is dual stack by default: redirected IPv4
/// connections arrive on it and are handed to an IPv4 target.
#[test]
fn a_dual_stack_virtual_listener_hands_ipv4_connections_to_an_ipv4_target() {
    if !privileged("the original-destination test (netns, iptables)") {
        return;
    }
    in_new_netns(move || {
        balancer_testkit::redirect(8080, 15001).expect("iptables REDIRECT (run scripts/setup)");
        let builder = (Builder::new(Backend::Exact).workers(WORKERS))
            .listen_virtual("[::]:15001")
            .handoff_target("0.0.0.0:8080");
        let server = EchoServer::start(util::bind(builder, Backend::Exact), Guard::Keep);
        let dst: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let clients = server.open_many(dst, 4);
        for client in &clients {
            let served = server.served(client);
            assert_eq!(served.original_dst, Some(dst));
            assert_eq!(served.listener.index(), 1, "handed to 0.0.0.0_8080");
        }
    });
}

/// A listener that is also the handoff target for its own address takes
/// both the connections made to it and those handed off to it, as one
/// listener (as an Envoy listener does): redirected clients to
/// 127.0.0.1:9090 and direct ones to 127.0.0.2:9090 land on the same id.
#[test]
fn a_bound_listener_can_be_the_handoff_target_for_its_address() {
    if !privileged("the original-destination test (netns, iptables)") {
        return;
    }
    in_new_netns(|| {
        balancer_testkit::redirect(9090, 15001).expect("iptables REDIRECT (run scripts/setup)");
        let builder = (Builder::new(Backend::Exact).workers(WORKERS))
            .listen_virtual("127.0.0.1:15001")
            .listen("0.0.0.0:9090")
            .handoff_target("0.0.0.0:9090");
        let listener = util::bind(builder, Backend::Exact);
        let target = listener
            .listener_id("0.0.0.0:9090")
            .expect("an id by address");
        assert_eq!(
            listener.listeners().count(),
            2,
            "the target adds no listener"
        );
        let server = EchoServer::start(listener, Guard::Keep);
        let redirected = server.open("127.0.0.1:9090".parse().unwrap());
        let direct = server.open("127.0.0.2:9090".parse().unwrap());
        assert_eq!(server.served(&redirected).listener, target);
        assert_eq!(
            server.served(&redirected).original_dst,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(server.served(&direct).listener, target);
        let snapshot = server.stats.snapshot();
        assert_eq!(snapshot.listeners[target.index()].name, "0.0.0.0_9090");
        assert_eq!(
            snapshot.listeners[target.index()]
                .total()
                .downstream_cx_active,
            2
        );
    });
}

/// With a NAT rule in the namespace, conntrack tracks every connection, so
/// one made straight to the virtual listener has an `SO_ORIGINAL_DST`: its
/// own address. That is no redirection: the connection has no original
/// destination (a transparent proxy would connect to itself) and stays on
/// the virtual listener.
#[test]
fn a_connection_made_straight_to_the_virtual_listener_has_no_original_destination() {
    if !privileged("the original-destination test (netns, iptables)") {
        return;
    }
    in_new_netns(|| {
        let server = redirected_server(Backend::Exact, Guard::Keep);
        let direct = server.open("127.0.0.1:15001".parse().unwrap());
        let redirected = server.open("127.0.0.1:8080".parse().unwrap());
        assert_eq!(server.served(&direct).original_dst, None);
        assert_eq!(
            server.served(&direct).listener.index(),
            0,
            "the virtual one"
        );
        assert_eq!(
            server.served(&redirected).original_dst,
            Some("127.0.0.1:8080".parse().unwrap())
        );
    });
}
