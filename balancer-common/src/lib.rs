//! Map names, layouts and limits shared by the `balancer-ebpf` sk_reuseport
//! program and the `balancer` crate that loads it.
//!
//! Everything the kernel program and userspace must agree on lives here, once.
//! With the `user` feature the value types implement [`aya::Pod`] so userspace
//! can read and write them through aya's typed maps.
#![no_std]
#![deny(missing_docs)]

/// Most workers one steering group can hold: the size of the socket array and
/// of the load array. The program scans at most this many slots per new
/// connection, so it also bounds the program's cost.
pub const MAX_WORKERS: u32 = 64;

/// Name of the `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY` holding worker `i`'s
/// listening socket at index `i`.
pub const SOCKETS_MAP: &str = "SOCKETS";

/// Name of the per-worker load array: `u64` at index `i` is worker `i`'s load
/// (its active connections over every listener it serves). Created with
/// `BPF_F_MMAPABLE`, so userspace maps it and updates it with atomic adds,
/// without a syscall per connection.
pub const LOADS_MAP: &str = "LOADS";

/// Name of the one-entry array holding the [`Config`].
pub const CONFIG_MAP: &str = "CONFIG";

/// Name of the sk_reuseport program (its function name in the object).
pub const PROGRAM: &str = "steering";

/// `BPF_F_MMAPABLE`: the map flag that lets userspace `mmap` an array map.
/// Linux 5.5 or later.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// A load value the program never prefers: a worker whose slot holds it is
/// chosen only when every worker does (and then the kernel's hash decides).
pub const LOAD_UNAVAILABLE: u64 = u64::MAX;

/// Steering configuration, the single value of [`CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Number of workers, `0..=MAX_WORKERS`. Zero (the map's initial state)
    /// means "not configured": the program leaves the choice to the kernel's
    /// 4-tuple hash instead of refusing the connection.
    pub workers: u32,
    /// Reserved, zero. Keeps the layout 8 bytes with no implicit padding.
    pub reserved: u32,
}

// SAFETY: `Config` is `repr(C)`, `Copy`, made only of `u32`s with no padding,
// so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
