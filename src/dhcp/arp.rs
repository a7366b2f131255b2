//! Neighbour entries for clients that have no address yet. RFC 2131 §4.1: with the
//! broadcast bit clear, the server unicasts DHCPOFFER/DHCPACK "to the client's hardware
//! address and 'yiaddr' address", but the client cannot answer ARP for an address it does
//! not hold yet. Like dnsmasq, we first insert a complete, non-permanent ARP entry
//! (SIOCSARP with ATF_COM) on the outgoing interface; the kernel ages it out as usual.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use nix::libc;
use socket2::{Domain, Socket, Type};

use crate::types::MacAddr;

/// `linux/if_arp.h`: the entry is complete (has a hardware address). Not exported by libc.
const ATF_COM: libc::c_int = 0x02;

#[derive(Debug, thiserror::Error)]
pub enum ArpError {
    #[error(
        "cannot set the ARP entry {ip} at {mac}: {iface:?} is not a valid interface name \
         (1 to 15 bytes, no NUL)"
    )]
    BadName {
        iface: String,
        ip: Ipv4Addr,
        mac: MacAddr,
    },
    #[error(
        "cannot open a socket to set the ARP entry {ip} at {mac} on interface {iface}: {source}"
    )]
    Socket {
        iface: String,
        ip: Ipv4Addr,
        mac: MacAddr,
        source: io::Error,
    },
    #[error("cannot set the ARP entry {ip} at {mac} on interface {iface}: {source}")]
    Ioctl {
        iface: String,
        ip: Ipv4Addr,
        mac: MacAddr,
        source: io::Error,
    },
}

impl ArpError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ArpError::BadName { .. } => "bad-name",
            ArpError::Socket { .. } => "socket",
            ArpError::Ioctl { .. } => "ioctl",
        }
    }
}

/// Inserts (or overwrites) the neighbour entry `ip` → `mac` on `iface` in the calling
/// thread's network namespace. Needs CAP_NET_ADMIN. Blocking, but a single quick syscall.
pub fn set_arp_entry(iface: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<(), ArpError> {
    let Some(req) = arp_request(iface, ip, mac) else {
        return Err(ArpError::BadName {
            iface: iface.to_string(),
            ip,
            mac,
        });
    };
    let socket =
        Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(|source| ArpError::Socket {
            iface: iface.to_string(),
            ip,
            mac,
            source,
        })?;
    // SAFETY: SIOCSARP reads one `struct arpreq` through the pointer, which points to a
    // fully initialised value living across the call; the descriptor is an open socket we own.
    let rc = unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSARP as libc::Ioctl,
            &req as *const libc::arpreq,
        )
    };
    if rc < 0 {
        return Err(ArpError::Ioctl {
            iface: iface.to_string(),
            ip,
            mac,
            source: io::Error::last_os_error(),
        });
    }
    tracing::debug!(%iface, %ip, %mac, "ARP entry set");
    Ok(())
}

/// The `struct arpreq` for SIOCSARP, or `None` when `iface` can't be an interface name.
fn arp_request(iface: &str, ip: Ipv4Addr, mac: MacAddr) -> Option<libc::arpreq> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return None;
    }
    // arp_pa holds a sockaddr_in: family, then port (2 bytes) and address in sa_data.
    let mut pa = [0 as libc::c_char; 14];
    for (d, s) in pa[2..6].iter_mut().zip(ip.octets()) {
        *d = s as libc::c_char;
    }
    // arp_ha: the hardware type as family, the MAC at the start of sa_data.
    let mut ha = [0 as libc::c_char; 14];
    for (d, s) in ha.iter_mut().zip(mac.octets()) {
        *d = s as libc::c_char;
    }
    let mut dev = [0 as libc::c_char; 16];
    for (d, s) in dev.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Some(libc::arpreq {
        arp_pa: libc::sockaddr {
            sa_family: libc::AF_INET as libc::sa_family_t,
            sa_data: pa,
        },
        arp_ha: libc::sockaddr {
            sa_family: libc::ARPHRD_ETHER,
            sa_data: ha,
        },
        arp_flags: ATF_COM,
        arp_netmask: libc::sockaddr {
            sa_family: 0,
            sa_data: [0; 14],
        },
        arp_dev: dev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(data: &[libc::c_char]) -> Vec<u8> {
        data.iter().map(|&c| c as u8).collect()
    }

    #[test]
    fn request_layout() {
        let mac: MacAddr = "02:00:00:00:00:50".parse().unwrap();
        let r = arp_request("pa0", Ipv4Addr::new(10, 250, 9, 50), mac).unwrap();
        assert_eq!(r.arp_pa.sa_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(bytes(&r.arp_pa.sa_data[..6]), [0, 0, 10, 250, 9, 50]);
        assert_eq!(r.arp_ha.sa_family, libc::ARPHRD_ETHER);
        assert_eq!(bytes(&r.arp_ha.sa_data[..6]), mac.octets());
        assert_eq!(r.arp_flags, ATF_COM);
        assert_eq!(bytes(&r.arp_dev[..4]), b"pa0\0");
    }

    #[test]
    fn bad_names_are_refused_before_the_kernel() {
        let mac = MacAddr([2, 0, 0, 0, 0, 0x50]);
        let ip = Ipv4Addr::new(10, 250, 9, 50);
        for name in ["", "sixteen-bytes-xx", "a\0b"] {
            assert!(arp_request(name, ip, mac).is_none(), "{name:?}");
            let e = set_arp_entry(name, ip, mac).unwrap_err();
            assert_eq!(e.label(), "bad-name");
        }
        // Fifteen bytes is the longest name Linux allows.
        assert!(arp_request("fifteen-bytes-x", ip, mac).is_some());
    }
}
