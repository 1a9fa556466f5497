//! Micro-benchmarks of the hot paths: the per-connection counter update, the
//! exact balancer's pick under contention, the eBPF load update, and the
//! whole accept path of each backend.
//!
//! `cargo bench --bench hot_paths`; eBPF cases run only as root.

use std::{
    hint::black_box,
    io::Read,
    net::{SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use balancer::{
    internals::{BareSteering, Counters, ExactPick},
    Backend, Builder,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One connection counted and released on a worker's counters.
fn counter_update(c: &mut Criterion) {
    let counters = Counters::new();
    c.bench_function("counter/count_and_release", |b| {
        b.iter(|| counters.count_and_release())
    });
    if is_root() {
        let steering = BareSteering::load(4).expect("load the steering program");
        let steered = Counters::steered(&steering, 1);
        c.bench_function("counter/ebpf_count_and_release", |b| {
            b.iter(|| steered.count_and_release())
        });
        c.bench_function("counter/ebpf_claim_and_release", |b| {
            b.iter(|| steered.claim_and_release())
        });
    }
}

/// The exact balancer's pick (lock, scan, count) with `threads` threads
/// picking at once; reports the time per pick seen by one thread.
fn exact_pick_contention(c: &mut Criterion) {
    let mut group = c.benchmark_group("exact_pick");
    for threads in [1, 2, 4, 8] {
        group.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let picker = Arc::new(ExactPick::new(8));
                    let start = Arc::new(Barrier::new(threads));
                    let handles: Vec<_> = (0..threads)
                        .map(|me| {
                            let (picker, start) = (Arc::clone(&picker), Arc::clone(&start));
                            std::thread::spawn(move || {
                                start.wait();
                                let began = Instant::now();
                                for _ in 0..iters {
                                    black_box(picker.pick(me));
                                }
                                began.elapsed()
                            })
                        })
                        .collect();
                    let total: Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
                    total / threads as u32
                })
            },
        );
    }
    group.finish();
}

/// Connect, accept on a worker, close: the per-connection cost of each
/// backend end to end on loopback.
fn accept_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("accept");
    for backend in Backend::ALL {
        if backend == Backend::Ebpf && !is_root() {
            continue;
        }
        let listener = Builder::new(backend)
            .workers(1)
            .listen("127.0.0.1:0")
            .bind()
            .expect("bind");
        let addr: SocketAddr = listener.listeners().next().unwrap().1;
        let mut worker = listener.into_workers().pop().unwrap();
        group.bench_function(backend.name(), |b| {
            b.iter(|| {
                let client = TcpStream::connect(addr).unwrap();
                let accepted = worker.accept_blocking().unwrap();
                drop(accepted);
                let mut client = client;
                let _ = client.read(&mut [0; 1]);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, counter_update, exact_pick_contention, accept_path);
criterion_main!(benches);
