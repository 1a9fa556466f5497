//! Listening TCP sockets as `/proc/thread-self/net/tcp` and `tcp6` list
//! them: the calling thread's network namespace, every process in it.

use std::{fs, io, net::SocketAddr};

/// How many TCP sockets listen on exactly `addr` (one per member of an
/// `SO_REUSEPORT` group), in the calling thread's network namespace.
pub(crate) fn listening_on(addr: SocketAddr) -> io::Result<usize> {
    let file = if addr.is_ipv4() { "tcp" } else { "tcp6" };
    let table = fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
    Ok(count_listening(&table, &local_address(addr)))
}

/// The rows of a `/proc/net/tcp` table in state `LISTEN` (`0A`) whose
/// local address is `local`.
fn count_listening(table: &str, local: &str) -> usize {
    (table.lines().skip(1))
        .filter(|row| {
            let mut fields = row.split_whitespace().skip(1);
            let at = fields.next();
            let state = fields.nth(1);
            at == Some(local) && state == Some("0A")
        })
        .count()
}

/// `addr` as the kernel prints a local address in `/proc/net/tcp{,6}`: the
/// address as 32-bit words in the machine's byte order, each `%08X`, then
/// `:` and the port as `%04X`.
fn local_address(addr: SocketAddr) -> String {
    let octets: Vec<u8> = match addr {
        SocketAddr::V4(a) => a.ip().octets().to_vec(),
        SocketAddr::V6(a) => a.ip().octets().to_vec(),
    };
    let words: String = (octets.chunks_exact(4))
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect();
    format!("{words}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_the_kernel_prints_them() {
        if cfg!(target_endian = "little") {
            let v4 = local_address("127.0.0.1:8080".parse().unwrap());
            assert_eq!(v4, "0100007F:1F90");
            let v6 = local_address("[::1]:443".parse().unwrap());
            assert_eq!(v6, "00000000000000000000000001000000:01BB");
        }
    }

    #[test]
    fn only_listening_rows_on_the_address_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(count_listening(table, "0100007F:1F90"), 2);
        assert_eq!(count_listening(table, "00000000:1F90"), 1);
        assert_eq!(count_listening(table, "0100007F:1F91"), 0);
    }

    #[test]
    fn a_real_listener_is_counted_and_a_closed_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(listening_on(addr).unwrap(), 1);
        drop(listener);
        assert_eq!(listening_on(addr).unwrap(), 0);
    }
}
