//! The program and its maps as one shared set: opened from the object this
//! process loaded, or from the fds another process handed over.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use aya::maps::{HashMap, Map, MapData, MapError, ReusePortSockArray};
use balancer_common::{
    socket_index, ListenAddr, SocketSlot, LISTENERS_MAP, LOADS_MAP, MAX_LISTENERS, PENDING_MAP,
    RODATA_MAP, SOCKETS_MAP, SOCKET_SLOTS_MAP,
};

use super::{loader::Loaded, loads::LoadMap, SteeringError};
use crate::sys;

/// The maps handed over, in order, after the program's fd.
const SHARED_MAPS: [&str; 6] = [
    SOCKETS_MAP,
    LISTENERS_MAP,
    SOCKET_SLOTS_MAP,
    LOADS_MAP,
    RODATA_MAP,
    PENDING_MAP,
];

/// How many fds a handover carries: the program and its maps.
pub(super) const SHARED_FDS: usize = 1 + SHARED_MAPS.len();

/// The program's maps this process writes, and every shared fd.
pub(super) struct Maps {
    sockets: ReusePortSockArray<MapData>,
    listeners: HashMap<MapData, ListenAddr, u32>,
    socket_slots: HashMap<MapData, u64, SocketSlot>,
    /// The program, then [`SHARED_MAPS`]: what a handover sends.
    shared: Vec<OwnedFd>,
}

impl Maps {
    /// Opens the maps of the object this process loaded. Returns them and
    /// the load map's data.
    pub(super) fn from_loaded(loaded: Loaded) -> Result<(Self, MapData), SteeringError> {
        let Loaded { program, mut maps } = loaded;
        let data = SHARED_MAPS
            .iter()
            .map(|&name| {
                maps.remove(name).ok_or_else(|| {
                    let source = MapError::InvalidName {
                        name: name.to_owned(),
                    };
                    SteeringError::map("finding", name, source)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::open(program, data)
    }

    /// Opens handed-over fds: the program, then [`SHARED_MAPS`].
    pub(super) fn from_fds(mut fds: Vec<OwnedFd>) -> Result<(Self, MapData), SteeringError> {
        if fds.len() != SHARED_FDS {
            return Err(SteeringError::Handover(io::Error::other(format!(
                "expected {SHARED_FDS} fds, got {}",
                fds.len()
            ))));
        }
        let maps = fds.split_off(1);
        let data = (SHARED_MAPS.iter().zip(maps))
            .map(|(&name, fd)| {
                MapData::from_fd(fd).map_err(|source| SteeringError::map("opening", name, source))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let program = fds.pop().expect("one fd is left: the program");
        Self::open(program, data)
    }

    /// `data` in [`SHARED_MAPS`] order. Returns the maps, then the load
    /// map's data.
    fn open(program: OwnedFd, data: Vec<MapData>) -> Result<(Self, MapData), SteeringError> {
        let mut shared = vec![program];
        for map in &data {
            shared.push(dup(map.fd().as_fd())?);
        }
        let [sockets, listeners, socket_slots, loads, _rodata, _pending] =
            <[MapData; 6]>::try_from(data).map_err(|_| unreachable_count())?;
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
            shared,
        };
        Ok((maps, loads))
    }

    /// The program's fd.
    pub(super) fn program(&self) -> BorrowedFd<'_> {
        self.shared[0].as_fd()
    }

    /// The kernel ids of the program, the load map and the config map.
    pub(super) fn ids(&self) -> Result<[u32; 3], SteeringError> {
        let id = |index: usize| {
            sys::bpf::object_id(self.shared[index].as_fd()).map_err(|source| {
                SteeringError::Socket {
                    operation: "reading a BPF object's id",
                    source,
                }
            })
        };
        // The program, then SHARED_MAPS: LOADS is 4th, the read-only
        // globals 5th.
        Ok([id(0)?, id(4)?, id(5)?])
    }

    /// What a handover sends: the program, then the maps.
    pub(super) fn shared(&self) -> Vec<BorrowedFd<'_>> {
        self.shared.iter().map(AsFd::as_fd).collect()
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
        slot: u32,
        socket: BorrowedFd<'_>,
    ) -> Result<(), SteeringError> {
        let operation = || format!("inserting slot {slot}'s socket of listener {row}");
        self.sockets
            .set(socket_index(row, slot), &socket, 0)
            .map_err(|source| SteeringError::map(operation(), SOCKETS_MAP, source))?;
        let cookie =
            socket2::SockRef::from(&socket)
                .cookie()
                .map_err(|source| SteeringError::Socket {
                    operation: "reading a socket's cookie (SO_COOKIE)",
                    source,
                })?;
        let value = SocketSlot {
            listener: row,
            worker: slot,
        };
        self.socket_slots
            .insert(cookie, value, 0)
            .map_err(|source| SteeringError::map(operation(), SOCKET_SLOTS_MAP, source))
    }
}

/// The load map over `loads`, scanning `slots` slots.
pub(super) fn load_map(loads: MapData, slots: u32) -> Result<LoadMap, SteeringError> {
    LoadMap::new(loads, slots as usize)
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

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, SteeringError> {
    fd.try_clone_to_owned()
        .map_err(|source| SteeringError::Socket {
            operation: "duplicating a map fd",
            source,
        })
}

fn unreachable_count() -> SteeringError {
    SteeringError::Handover(io::Error::other("wrong number of maps"))
}
