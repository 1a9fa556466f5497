//! Kernel feature probes for the steering program: each asks the `bpf`
//! system call for exactly one thing the program uses and closes what it
//! created. Each costs one system call.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
/// `offsetof(struct sk_reuseport_md, migrating_sk)`.
const MIGRATING_SK_OFFSET: i16 = 48;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`; the kernel
/// treats the fields a shorter attribute leaves out as zero.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// One BPF instruction: opcode, registers (`src << 4 | dst`), offset,
/// immediate.
#[repr(C)]
struct Insn(u8, u8, i16, i32);

/// Creates a one-entry array map with `flags` (e.g. `BPF_F_MMAPABLE`, Linux
/// 5.5) and closes it.
pub(crate) fn probe_array_flags(flags: u32) -> io::Result<()> {
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        map_flags: flags,
    };
    bpf(BPF_MAP_CREATE, &attr).map(drop)
}

/// Loads a two-instruction `sk_reuseport/migrate` program that reads
/// `migrating_sk` (Linux 5.14) and closes it.
pub(crate) fn probe_sk_reuseport_migrate() -> io::Result<()> {
    let insns = [
        // r0 = *(u64 *)(r1 + offsetof(migrating_sk))
        Insn(0x79, 0x10, MIGRATING_SK_OFFSET, 0),
        // r0 = SK_PASS; exit
        Insn(0xb7, 0x00, 0, 1),
        Insn(0x95, 0x00, 0, 0),
    ];
    let license = c"GPL";
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: [0; 16],
        prog_ifindex: 0,
        expected_attach_type: BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
    };
    bpf(BPF_PROG_LOAD, &attr).map(drop)
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The kernel's id of a BPF program or map (what `bpftool prog show` and
/// `bpftool map show` list): the second field of either's info.
pub(crate) fn object_id(object: BorrowedFd<'_>) -> io::Result<u32> {
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // `struct bpf_prog_info` and `struct bpf_map_info` both begin with
    // `__u32 type; __u32 id;`; the kernel fills what `info_len` allows.
    let mut info = [0u32; 2];
    let attr = GetInfo {
        bpf_fd: object.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // `info` is writable for `info_len` bytes for the duration of the call.
    call(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    Ok(info[1])
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_FREEZE: libc::c_long = 22;
/// The verifier's log level when a load failed: its reasoning, not stats.
const LOG_LEVEL_VERBOSE: u32 = 1;
/// The most verifier log a failed load returns.
const LOG_MAX: usize = 1 << 24;

/// Writes `value` at key 0 of an array map (a data section's one entry).
pub(crate) fn write_first_entry(map: BorrowedFd<'_>, value: &[u8]) -> io::Result<()> {
    #[repr(C)]
    struct Update {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let key = 0u32;
    let attr = Update {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &raw const key as u64,
        value: value.as_ptr() as u64,
        flags: 0,
    };
    call(BPF_MAP_UPDATE_ELEM, &attr)
}

/// Freezes a map: from now on no system call may write it (the programs
/// using it still may). Linux 5.2.
pub(crate) fn freeze_map(map: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Freeze {
        map_fd: u32,
    }
    let attr = Freeze {
        map_fd: map.as_raw_fd() as u32,
    };
    call(BPF_MAP_FREEZE, &attr)
}

/// An sk_reuseport program to load: its instructions (8 bytes each), its
/// license and its name.
pub(crate) struct ReuseportProgram<'a> {
    pub(crate) instructions: &'a [u64],
    pub(crate) license: &'a std::ffi::CStr,
    pub(crate) name: &'a str,
}

/// Loads an `sk_reuseport/migrate` program. On failure, loads it again with
/// the verifier's log on, and returns the error with the log.
pub(crate) fn load_reuseport_program(
    program: &ReuseportProgram<'_>,
) -> Result<OwnedFd, (io::Error, String)> {
    let first = load_with_log(program, &mut []);
    let Err(error) = first else {
        return first.map_err(|e| (e, String::new()));
    };
    let mut log = vec![0u8; LOG_MAX];
    match load_with_log(program, &mut log) {
        Ok(fd) => Ok(fd),
        Err(_) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err((error, String::from_utf8_lossy(&log[..end]).into_owned()))
        }
    }
}

fn load_with_log(program: &ReuseportProgram<'_>, log: &mut [u8]) -> io::Result<OwnedFd> {
    let mut name = [0u8; 16];
    let len = program.name.len().min(15);
    name[..len].copy_from_slice(&program.name.as_bytes()[..len]);
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_REUSEPORT,
        insn_cnt: program.instructions.len() as u32,
        insns: program.instructions.as_ptr() as u64,
        license: program.license.as_ptr() as u64,
        log_level: if log.is_empty() { 0 } else { LOG_LEVEL_VERBOSE },
        log_size: log.len() as u32,
        // No buffer at all without a log: the kernel refuses one of size 0.
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
    };
    bpf(BPF_PROG_LOAD, &attr)
}

/// `bpf(cmd, attr, sizeof attr)` for a command that returns no fd.
fn call<A>(cmd: libc::c_long, attr: &A) -> io::Result<()> {
    let size = std::mem::size_of::<A>() as libc::c_uint;
    // SAFETY: `attr` is a readable `repr(C)` prefix of `union bpf_attr` for
    // `cmd`, `size` is its size, and every pointer inside it outlives the
    // call.
    super::cvt(unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const A, size) }).map(drop)
}

/// `bpf(cmd, attr, sizeof attr)`, returning the new object's fd.
fn bpf<A>(cmd: libc::c_long, attr: &A) -> io::Result<OwnedFd> {
    let size = std::mem::size_of::<A>() as libc::c_uint;
    // SAFETY: `attr` is a readable `repr(C)` prefix of `union bpf_attr` for
    // `cmd`, `size` is its size, and every pointer inside it (instructions,
    // license) outlives the call.
    let fd = super::cvt(unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const A, size) })?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
