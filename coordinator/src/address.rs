//! The address the coordinator gives its workers. Local workers get the loopback address it
//! listens on; remote ones (Slurm, ssh, `serve` on a wildcard address) get `--advertise HOST`,
//! else this machine's host name when it resolves to an address other than loopback, else
//! this machine's outward-facing IP address, so that a URL like `http://0.0.0.0:PORT` is never
//! handed out. The scheme is `https` when the coordinator serves TLS.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

/// The host workers should dial for a coordinator bound to `bound`, and a warning when remote
/// workers are unlikely to reach it.
pub fn advertised_host(bound: SocketAddr, advertise: Option<&str>, remote: bool) -> (String, Option<String>) {
    if let Some(a) = advertise.map(str::trim).filter(|a| !a.is_empty()) {
        return (a.to_string(), None);
    }
    let ip = bound.ip();
    if ip.is_unspecified() {
        if remote {
            return (machine_host(), None);
        }
        let lo = if ip.is_ipv4() { "127.0.0.1" } else { "::1" };
        return (lo.to_string(), None);
    }
    let warning = (remote && ip.is_loopback())
        .then(|| format!("listening on loopback ({ip}): only workers on this machine can connect (use --listen 0.0.0.0:0, or --advertise HOST with a reachable --listen)"));
    (ip.to_string(), warning)
}

/// `http(s)://HOST:PORT`, with an IPv6 address in brackets.
pub fn url(host: &str, port: u16, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if host.contains(':') && !host.starts_with('[') { format!("{scheme}://[{host}]:{port}") } else { format!("{scheme}://{host}:{port}") }
}

/// This machine's host name if it resolves to a non-loopback address; else the IP address of
/// the interface that routes outward; else the host name anyway (it may still resolve on the
/// workers' side); else 127.0.0.1.
pub fn machine_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    if !name.is_empty() && (name.as_str(), 0).to_socket_addrs().is_ok_and(|mut a| a.any(|a| !a.ip().is_loopback())) {
        return name;
    }
    if let Some(ip) = outward_ip() {
        return ip.to_string();
    }
    if name.is_empty() { "127.0.0.1".to_string() } else { name }
}

/// The local address a datagram to a public address would leave from (nothing is sent).
fn outward_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    // 192.0.2.1 is TEST-NET-1: connecting a UDP socket only picks a route.
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_get_a_dialable_address() {
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let specific: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        assert_eq!(advertised_host(any, Some("node7"), true), ("node7".into(), None));
        assert_eq!(advertised_host(any, None, false).0, "127.0.0.1");
        let (h, w) = advertised_host(any, None, true);
        assert!(h != "0.0.0.0" && !h.is_empty() && w.is_none(), "{h}");
        assert_eq!(advertised_host(specific, None, true), ("10.1.2.3".into(), None));
        let (h, w) = advertised_host(lo, None, true);
        assert_eq!(h, "127.0.0.1");
        assert!(w.is_some_and(|w| w.contains("--advertise")));
        assert_eq!(advertised_host(lo, None, false), ("127.0.0.1".into(), None));
        assert_eq!(url("::1", 5, false), "http://[::1]:5");
        assert_eq!(url("node7", 5, true), "https://node7:5");
    }
}
