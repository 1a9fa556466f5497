//! The program and its maps as one shared set: opened from the object this
//! process loaded, or from the fds another process handed over.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, ReusePortSockArray};
use balancer_common::{
    socket_index, ListenAddr, SocketSlot, CPUS_MAP, LISTENERS_MAP, LOADS_MAP, MAX_LISTENERS,
    MAX_SLOTS, PENDING_MAP, RODATA_MAP, SCAN_MAP, SOCKETS_MAP, SOCKET_SLOTS_MAP,
};

use super::{loader::Loaded, LoadMap, Slot, SteeringError};
use crate::sys;

/// One value per map the processes sharing the program share, by name.
#[derive(Clone, Copy, Debug)]
pub(super) struct PerMap<T> {
    pub(super) sockets: T,
    pub(super) listeners: T,
    pub(super) socket_slots: T,
    pub(super) loads: T,
    /// The frozen read-only globals: the program's configuration.
    pub(super) config: T,
    pub(super) pending: T,
    pub(super) scan: T,
    pub(super) cpus: T,
}

impl PerMap<&'static str> {
    /// The maps' names in the object.
    pub(super) const NAMES: Self = Self {
        sockets: SOCKETS_MAP,
        listeners: LISTENERS_MAP,
        socket_slots: SOCKET_SLOTS_MAP,
        loads: LOADS_MAP,
        config: RODATA_MAP,
        pending: PENDING_MAP,
        scan: SCAN_MAP,
        cpus: CPUS_MAP,
    };
}

/// How many maps the processes sharing the program share.
const SHARED_MAPS: usize = 8;

impl<T> PerMap<T> {
    /// Each value with its map's name through `f`, in handover order.
    pub(super) fn try_map<U, E>(
        self,
        mut f: impl FnMut(&'static str, T) -> Result<U, E>,
    ) -> Result<PerMap<U>, E> {
        let names = PerMap::NAMES;
        Ok(PerMap {
            sockets: f(names.sockets, self.sockets)?,
            listeners: f(names.listeners, self.listeners)?,
            socket_slots: f(names.socket_slots, self.socket_slots)?,
            loads: f(names.loads, self.loads)?,
            config: f(names.config, self.config)?,
            pending: f(names.pending, self.pending)?,
            scan: f(names.scan, self.scan)?,
            cpus: f(names.cpus, self.cpus)?,
        })
    }

    /// The values in handover order.
    pub(super) fn as_array(&self) -> [&T; SHARED_MAPS] {
        [
            &self.sockets,
            &self.listeners,
            &self.socket_slots,
            &self.loads,
            &self.config,
            &self.pending,
            &self.scan,
            &self.cpus,
        ]
    }

    /// Values given in handover order.
    pub(super) fn from_array(values: [T; SHARED_MAPS]) -> Self {
        let [sockets, listeners, socket_slots, loads, config, pending, scan, cpus] = values;
        Self {
            sockets,
            listeners,
            socket_slots,
            loads,
            config,
            pending,
            scan,
            cpus,
        }
    }
}

/// The program's and its shared maps' fds: what a handover carries, the
/// program first, then the maps in [`PerMap`] order.
pub(super) struct SharedFds {
    pub(super) program: OwnedFd,
    pub(super) maps: PerMap<OwnedFd>,
}

impl SharedFds {
    /// How many fds a handover carries.
    pub(super) const COUNT: usize = 1 + SHARED_MAPS;

    /// The fds in handover order.
    pub(super) fn as_fds(&self) -> Vec<BorrowedFd<'_>> {
        let maps = self.maps.as_array().map(AsFd::as_fd);
        std::iter::once(self.program.as_fd()).chain(maps).collect()
    }

    /// Duplicates of every fd, e.g. to hand over from another thread.
    pub(super) fn try_clone(&self) -> Result<Self, SteeringError> {
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(SteeringError::DuplicateFd);
        Ok(Self {
            program: dup(&self.program)?,
            maps: PerMap::from_array(self.maps.as_array()).try_map(|_, fd| dup(fd))?,
        })
    }

    /// The fds as received, in handover order; `None` unless there are
    /// exactly [`SharedFds::COUNT`].
    pub(super) fn from_vec(mut fds: Vec<OwnedFd>) -> Option<Self> {
        if fds.len() != Self::COUNT {
            return None;
        }
        let maps = <[OwnedFd; SHARED_MAPS]>::try_from(fds.split_off(1)).ok()?;
        Some(Self {
            program: fds.pop()?,
            maps: PerMap::from_array(maps),
        })
    }

    /// The kernel ids of the program, the load map and the config map.
    pub(super) fn ids(&self) -> Result<ObjectIds, SteeringError> {
        let id = |fd: &OwnedFd| sys::bpf::object_id(fd.as_fd()).map_err(SteeringError::ObjectId);
        Ok(ObjectIds {
            program: id(&self.program)?,
            loads: id(&self.maps.loads)?,
            config: id(&self.maps.config)?,
        })
    }
}

/// The kernel ids of the program and the maps `/stats` names.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjectIds {
    pub(crate) program: u32,
    pub(crate) loads: u32,
    pub(crate) config: u32,
}

/// The program's maps this process writes, and every shared fd.
pub(super) struct Maps {
    sockets: ReusePortSockArray<MapData>,
    listeners: HashMap<MapData, ListenAddr, u32>,
    socket_slots: HashMap<MapData, u64, SocketSlot>,
    cpus: Array<MapData, u32>,
    /// The cookies of the sockets this process put in `socket_slots`.
    cookies: Vec<u64>,
    /// What a handover sends.
    shared: SharedFds,
}

/// The maps this process maps into memory: the per-worker loads and what
/// the program scans (the slot count and the block summaries).
pub(super) struct Mapped {
    pub(super) loads: MapData,
    pub(super) scan: MapData,
}

impl Maps {
    /// Opens the maps of the object this process loaded. Returns them and
    /// the load map's data.
    pub(super) fn from_loaded(loaded: Loaded) -> Result<(Self, Mapped), SteeringError> {
        let Loaded { program, mut maps } = loaded;
        let data = PerMap::NAMES.try_map(|name, _| {
            maps.remove(name).ok_or_else(|| {
                let source = MapError::InvalidName {
                    name: name.to_owned(),
                };
                SteeringError::map("finding", name, source)
            })
        })?;
        Self::open(program, data)
    }

    /// Opens handed-over fds.
    pub(super) fn from_fds(fds: SharedFds) -> Result<(Self, Mapped), SteeringError> {
        let data = (fds.maps).try_map(|name, fd| {
            MapData::from_fd(fd).map_err(|source| SteeringError::map("opening", name, source))
        })?;
        Self::open(fds.program, data)
    }

    /// Returns the maps, then those to map into memory.
    fn open(program: OwnedFd, data: PerMap<MapData>) -> Result<(Self, Mapped), SteeringError> {
        let dup = |_, map: &MapData| map.fd().as_fd().try_clone_to_owned();
        let shared = SharedFds {
            program,
            maps: PerMap::from_array(data.as_array())
                .try_map(dup)
                .map_err(SteeringError::DuplicateFd)?,
        };
        let PerMap {
            sockets,
            listeners,
            socket_slots,
            loads,
            scan,
            cpus,
            ..
        } = data;
        let maps = Self {
            sockets: typed(sockets, SOCKETS_MAP, |m| {
                ReusePortSockArray::try_from(Map::ReusePortSockArray(m))
            })?,
            listeners: typed(listeners, LISTENERS_MAP, |m| {
                HashMap::try_from(Map::HashMap(m))
            })?,
            socket_slots: typed(socket_slots, SOCKET_SLOTS_MAP, |m| {
                HashMap::try_from(Map::HashMap(m))
            })?,
            cpus: typed(cpus, CPUS_MAP, |m| Array::try_from(Map::Array(m)))?,
            cookies: Vec::new(),
            shared,
        };
        Ok((maps, Mapped { loads, scan }))
    }

    /// Names the worker in `slot` as the one pinned to CPU `cpu`, for
    /// locality.
    pub(super) fn pin(&mut self, cpu: usize, slot: Slot) -> Result<(), SteeringError> {
        let cpu = u32::try_from(cpu).unwrap_or(u32::MAX);
        (self.cpus.set(cpu, slot.index() + 1, 0)).map_err(|source| {
            SteeringError::map(format!("pinning {slot} to CPU {cpu}"), CPUS_MAP, source)
        })
    }

    /// The program's fd.
    pub(super) fn program(&self) -> BorrowedFd<'_> {
        self.shared.program.as_fd()
    }

    /// The program's and maps' fds, for a handover and the ids.
    pub(super) fn shared(&self) -> &SharedFds {
        &self.shared
    }

    /// The row of the listener bound at `addr`: the one another process
    /// sharing the program already added, or a new one.
    pub(super) fn listener_row(&mut self, addr: SocketAddr) -> Result<u32, SteeringError> {
        let key = listen_addr(addr);
        if let Ok(row) = self.listeners.get(&key, 0) {
            return Ok(row);
        }
        let rows = self.listeners.keys().count() as u32;
        if rows >= MAX_LISTENERS {
            return Err(SteeringError::ListenerCount { max: MAX_LISTENERS });
        }
        self.listeners
            .insert(key, rows, 0)
            .map_err(|source| SteeringError::map("adding a listener", LISTENERS_MAP, source))?;
        Ok(rows)
    }

    /// Puts `socket` in `row` of the socket array at `slot`, and notes its
    /// cookie for migrations.
    pub(super) fn insert_socket(
        &mut self,
        row: u32,
        slot: Slot,
        socket: BorrowedFd<'_>,
    ) -> Result<(), SteeringError> {
        let operation = || format!("inserting {slot}'s socket of listener {row}");
        self.sockets
            .set(socket_index(row, slot.index()), &socket, 0)
            .map_err(|source| SteeringError::map(operation(), SOCKETS_MAP, source))?;
        let cookie =
            (socket2::SockRef::from(&socket).cookie()).map_err(SteeringError::SocketCookie)?;
        let value = SocketSlot {
            listener: row,
            worker: slot.index(),
        };
        self.socket_slots
            .insert(cookie, value, 0)
            .map_err(|source| SteeringError::map(operation(), SOCKET_SLOTS_MAP, source))?;
        self.cookies.push(cookie);
        Ok(())
    }

    /// Removes the `SOCKET_SLOTS` entries of the sockets this process put
    /// there: their sets are gone, and the map must keep room for the next
    /// generation's (it holds `MAX_LISTENERS × MAX_SLOTS`).
    pub(super) fn forget_own_sockets(&mut self) {
        for cookie in self.cookies.drain(..) {
            // A missing entry is what we want anyway.
            let _ = self.socket_slots.remove(&cookie);
        }
    }

    /// Removes the `SOCKET_SLOTS` entries whose worker slot no process
    /// owns: left by a process killed before it could remove its own (a
    /// slot is claimed before its sockets are inserted, so a live set's
    /// entries always name an owned slot). Returns how many.
    pub(super) fn forget_sockets_of_free_slots(&mut self, loads: &LoadMap) -> usize {
        let stale: Vec<u64> = (self.socket_slots.iter())
            .filter_map(Result::ok)
            .filter(|(_, at)| at.worker >= MAX_SLOTS || loads.is_free(Slot::new(at.worker)))
            .map(|(cookie, _)| cookie)
            .collect();
        (stale.iter())
            .filter(|cookie| self.socket_slots.remove(cookie).is_ok())
            .count()
    }
}

/// The listener key the program reads off a listening socket bound to
/// `addr`: family, port in host order, address words in network order.
pub(super) fn listen_addr(addr: SocketAddr) -> ListenAddr {
    let words = |octets: &[u8]| -> [u32; 4] {
        let mut ip = [0; 4];
        for (word, chunk) in ip.iter_mut().zip(octets.chunks_exact(4)) {
            *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        ip
    };
    let (family, ip) = match addr {
        SocketAddr::V4(a) => (libc::AF_INET, words(&a.ip().octets())),
        SocketAddr::V6(a) => (libc::AF_INET6, words(&a.ip().octets())),
    };
    ListenAddr {
        family: family as u32,
        port: u32::from(addr.port()),
        ip,
    }
}

fn typed<T>(
    data: MapData,
    name: &'static str,
    open: impl FnOnce(MapData) -> Result<T, MapError>,
) -> Result<T, SteeringError> {
    open(data).map_err(|source| SteeringError::map("opening", name, source))
}
