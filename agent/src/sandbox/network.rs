//! The network of a sandboxed process. At the namespace levels every process has
//! a network namespace of its own: [`Network::Isolated`] keeps only its loopback;
//! [`Network::Outbound`] and [`Network::Build`] get a way out through slirp4netns
//! (user-mode NAT, started here for the namespace's pid, `--disable-host-loopback`
//! so 10.0.2.2 never reaches the host's 127.0.0.1), and [`block`] adds prohibit
//! routes inside the namespace (netlink, from the helper, before it drops its
//! capabilities) to the scheduler, this agent and the cloud metadata address.
//! Routes rather than a packet filter: a namespace of its own has no other route
//! to them, needs no iptables/nftables on the host, and a user process without
//! CAP_NET_ADMIN cannot remove them. IPv6 has no route out (slirp4netns runs
//! without --enable-ipv6).

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Ipv4Addr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::Missing;

/// The cloud metadata address (AWS, GCP, Azure).
pub(crate) const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// slirp4netns's DNS forwarder inside the namespace.
const SLIRP_DNS: &str = "10.0.2.3";
/// How long slirp4netns may take to attach to a namespace.
const SLIRP_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a sandboxed process may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Network {
    /// Building an environment: the package index and outbound network; not the
    /// host's loopback nor the metadata address.
    Build,
    /// Serving or training: outbound network, but never the host's loopback, the
    /// scheduler, this agent or the metadata address.
    Outbound,
    /// Only its own loopback (`isolate_network`).
    Isolated,
}

impl Network {
    /// The network of a job's serving, training or dry-run processes.
    pub(crate) fn of_job(isolate_network: bool) -> Network {
        if isolate_network {
            Network::Isolated
        } else {
            Network::Outbound
        }
    }
}

/// Why a namespace got no network.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkError {
    #[error("cannot start slirp4netns: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("slirp4netns did not attach to the sandbox's network namespace ({0})")]
    NotReady(String),
    #[error("cannot add the sandbox's blocked routes: {0}")]
    Route(#[source] std::io::Error),
}

/// slirp4netns is installed.
pub(crate) fn slirp_installed() -> Result<(), Missing> {
    let ok = std::process::Command::new("slirp4netns")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(()).ok_or(Missing::Slirp)
}

/// The IPv4 addresses of `hosts` (names or literals) that user code must not
/// reach, and the metadata address. Loopback is left out: inside a namespace it
/// is the namespace's own.
pub(crate) fn blocked_addresses(hosts: &[&str]) -> Vec<Ipv4Addr> {
    let mut set = BTreeSet::from([METADATA]);
    for host in hosts {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(addrs) = (host, 0).to_socket_addrs() else {
            tracing::warn!(%host, "cannot resolve a host user code must not reach");
            continue;
        };
        for addr in addrs {
            if let std::net::IpAddr::V4(v4) = addr.ip() {
                if !v4.is_loopback() && !v4.is_unspecified() {
                    set.insert(v4);
                }
            }
        }
    }
    set.into_iter().collect()
}

/// The host of a URL (`http://host:port/...`), without brackets.
pub(crate) fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

/// A package index pip is told to use is on this host's loopback, which a
/// network namespace cannot reach: builds then share the host's network.
pub(crate) fn loopback_index(pip: &aibro_repo::PipOptions) -> bool {
    let urls = pip.pip_index_url.iter().chain(&pip.pip_extra_index_url);
    urls.chain(&pip.pip_find_links)
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .filter_map(|u| url_host(u))
        .any(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

/// What the process's routes block.
pub(crate) fn blocked_for(network: Network, blocked: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    match network {
        Network::Build => vec![METADATA],
        Network::Outbound => blocked.to_vec(),
        Network::Isolated => Vec::new(),
    }
}

/// Writes the resolv.conf of namespaces with a way out into `dir`.
pub(crate) fn write_resolv_conf(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("resolv.conf");
    std::fs::write(&path, format!("nameserver {SLIRP_DNS}\n"))?;
    Ok(path)
}

/// Attaches slirp4netns to the network namespace of `pid`; it exits when every
/// copy of `exit`'s write end (held by the sandbox's processes) is closed.
pub(crate) async fn start_slirp(pid: u32, exit: OwnedFd) -> Result<(), NetworkError> {
    let (mut ready_r, ready_w) = std::io::pipe().map_err(NetworkError::Spawn)?;
    let mut cmd = tokio::process::Command::new("slirp4netns");
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
        .arg(format!("--exit-fd={}", exit.as_raw_fd()))
        .arg(format!("--userns-path=/proc/{pid}/ns/user"))
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // It logs every attach; a failure shows in its exit status.
        .stderr(Stdio::null())
        .kill_on_drop(false);
    let fds = [ready_w.as_raw_fd(), exit.as_raw_fd()];
    // SAFETY: fcntl and prctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            for fd in fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(NetworkError::Spawn)?;
    drop((ready_w, exit));
    let read = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8; 1];
        ready_r.read(&mut byte)
    });
    match tokio::time::timeout(SLIRP_READY_TIMEOUT, read).await {
        Ok(Ok(Ok(1))) => Ok(()),
        Ok(_) => {
            let status = child
                .wait()
                .await
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            Err(NetworkError::NotReady(format!("it exited: {status}")))
        }
        Err(_) => {
            let _ = child.start_kill();
            Err(NetworkError::NotReady(format!(
                "not ready after {SLIRP_READY_TIMEOUT:?}"
            )))
        }
    }
}

/// Adds a prohibit route to each of `addrs` in this process's network namespace
/// (needs CAP_NET_ADMIN there).
pub(crate) fn block(addrs: &[Ipv4Addr]) -> Result<(), NetworkError> {
    if addrs.is_empty() {
        return Ok(());
    }
    let sock = netlink_socket().map_err(NetworkError::Route)?;
    for (seq, addr) in (1u32..).zip(addrs) {
        add_prohibit_route(&sock, seq, *addr).map_err(NetworkError::Route)?;
    }
    Ok(())
}

fn netlink_socket() -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new fd this function owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One RTM_NEWROUTE request (a /32 prohibit route in the main table) and its ack.
fn add_prohibit_route(sock: &OwnedFd, seq: u32, addr: Ipv4Addr) -> std::io::Result<()> {
    const RTN_PROHIBIT: u8 = 8;
    const RTA_DST: u16 = 1;
    const RTPROT_STATIC: u8 = 4;
    const RT_TABLE_MAIN: u8 = 254;
    let mut msg = Vec::with_capacity(36);
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    msg.extend_from_slice(&36u32.to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
    msg.extend_from_slice(&(flags as u16).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let rtmsg = [
        libc::AF_INET as u8,
        32,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        0,
        RTN_PROHIBIT,
    ];
    msg.extend_from_slice(&rtmsg);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&RTA_DST.to_ne_bytes());
    msg.extend_from_slice(&addr.octets());
    // SAFETY: msg is a valid buffer; a zeroed sockaddr_nl addresses the kernel.
    let sent = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            std::ptr::addr_of!(to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ack = [0u8; 1024];
    // SAFETY: ack is a valid, writable buffer of its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // nlmsghdr (16 bytes) then nlmsgerr's error: 0 or -errno.
    let kind = u16::from_ne_bytes([ack[4], ack[5]]);
    let error = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
    match (kind, error) {
        (k, 0) if k == libc::NLMSG_ERROR as u16 => Ok(()),
        (k, e) if k == libc::NLMSG_ERROR as u16 => Err(std::io::Error::from_raw_os_error(-e)),
        _ => Err(std::io::Error::other("unexpected netlink answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_the_metadata_address_and_named_hosts_but_not_loopback() {
        let blocked = blocked_addresses(&["127.0.0.1", "10.1.2.3", "localhost", "[::1]"]);
        assert_eq!(blocked, [Ipv4Addr::new(10, 1, 2, 3), METADATA]);
        assert_eq!(blocked_for(Network::Build, &blocked), [METADATA]);
        assert_eq!(blocked_for(Network::Outbound, &blocked), blocked);
        assert!(blocked_for(Network::Isolated, &blocked).is_empty());
    }

    #[test]
    fn finds_the_host_of_urls_and_loopback_indexes() {
        assert_eq!(url_host("http://10.0.0.5:7070"), Some("10.0.0.5"));
        assert_eq!(
            url_host("https://u:p@sched.example/x"),
            Some("sched.example")
        );
        assert_eq!(url_host("http://[::1]:80/"), Some("::1"));
        let mut pip = aibro_repo::PipOptions::default();
        assert!(!loopback_index(&pip));
        pip.pip_find_links = vec!["/wheels".into(), "https://pypi.org/simple".into()];
        assert!(!loopback_index(&pip));
        pip.pip_extra_index_url = vec!["http://127.0.0.1:3141/simple".into()];
        assert!(loopback_index(&pip));
    }
}
