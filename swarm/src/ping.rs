//! ICMP echo for the bee: one socket per address family shared by every target, so a
//! single process pings thousands of targets concurrently (the original pinger ran one
//! `ping -c 10` at a time).
//!
//! Linux gives an unprivileged ICMP "ping socket" (DGRAM) when `net.ipv4.ping_group_range`
//! allows the process's group, else a RAW socket needs `CAP_NET_RAW` (the bee's systemd
//! unit grants it as an ambient capability). The bee tries DGRAM, then RAW.
//!
//! Round-trip times are measured as iputils `ping` measures them: the send time is read
//! (`CLOCK_REALTIME`) just before `sendto` and carried in the echo's payload, the receive
//! time is the kernel's timestamp of the reply's arrival (`SO_TIMESTAMPNS`, socket(7)), so
//! the time the bee takes to get to a reply (scheduling, a busy runtime) is not counted.
//! A kernel time that cannot be right (negative, or longer than the time measured in user
//! space with the monotonic clock, e.g. after the wall clock was stepped) is replaced by
//! the user-space measurement. A reply is matched by a per-probe id in its payload (and,
//! on a RAW socket, this process's ICMP identifier and a per-process key), so concurrent
//! probes never collide, and replies to other pingers on the machine are ignored.
//!
//! Besides the round trips a round reports the TTL (IPv4) or hop limit (IPv6) its replies
//! arrived with (`IP_RECVTTL` ip(7), `IPV6_RECVHOPLIMIT` RFC 3542 §6.3: the kernel hands it
//! over with each datagram) and how late its probes left against their schedule.
//!
//! Only echo replies count as answers: an ICMP error (destination unreachable, time
//! exceeded) is not one; the probe is lost when its timeout passes (as `ping` counts it).

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use record::{PingRecord, Rtt, Status};
use tokio::io::unix::AsyncFd;

/// Bytes of echo payload after the 8-byte ICMP header: 56, as `ping`'s default (84-byte
/// IPv4 packets). Holds the probe id, the process key and the send time.
pub const PAYLOAD_BYTES: usize = 56;

/// A probe waiting for its reply.
struct Pending {
    /// Where its round collects the round-trip times of its answered probes.
    round: Arc<Collected>,
    addr: IpAddr,
    /// Monotonic time taken before the echo was sent: an upper bound of the round trip.
    sent: Instant,
    /// A reply later than this is a loss (`ping -W`).
    timeout: Duration,
}

/// The answers of one round, filed by the reader task.
struct Collected {
    /// Round-trip times in ms.
    samples: Mutex<Vec<f64>>,
    /// How many answers complete the round (usize::MAX until all probes are sent).
    want: AtomicUsize,
    /// The lowest TTL / hop limit of the answers (u16::MAX: none known).
    ttl: AtomicU16,
    /// Told when the round is complete, so it ends without waiting out its timeout.
    done: tokio::sync::Notify,
}

type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

/// One address family's socket and the probes waiting on it.
struct Family {
    fd: Arc<AsyncFd<OwnedFd>>,
    v6: bool,
    rx: Arc<Receiver>,
    recv: tokio::task::JoinHandle<()>,
}

impl Drop for Family {
    fn drop(&mut self) {
        self.recv.abort();
    }
}

/// The ICMP sockets of one bee.
pub struct Icmp {
    v4: Option<Family>,
    v6: Option<Family>,
    v4_error: Option<String>,
    v6_error: Option<String>,
    ident: u16,
    key: u64,
    seq: AtomicU16,
    next_id: AtomicU64,
}

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch: the clock of the kernel's
/// `SO_TIMESTAMPNS` receive timestamps.
fn realtime_ns() -> i64 {
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
}

fn setsockopt<T>(fd: i32, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid T for the duration of the call; its size is passed.
    let rc =
        unsafe { libc::setsockopt(fd, level, name, value as *const T as *const libc::c_void, size_of::<T>() as u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens an ICMP socket of one family: a ping socket (DGRAM) when allowed, else RAW.
/// Returns the socket and whether it is RAW.
fn open_socket(v6: bool) -> io::Result<(OwnedFd, bool)> {
    let (domain, proto) = if v6 { (libc::AF_INET6, libc::IPPROTO_ICMPV6) } else { (libc::AF_INET, libc::IPPROTO_ICMP) };
    let mut first_err = None;
    for (ty, raw) in [(libc::SOCK_DGRAM, false), (libc::SOCK_RAW, true)] {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            first_err.get_or_insert(io::Error::last_os_error());
            continue;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw_fd = fd.as_raw_fd();
        setsockopt(raw_fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &1i32)?;
        // The reply's TTL / hop limit with each datagram; without it records carry no ttl.
        let _ = if v6 {
            setsockopt(raw_fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &1i32)
        } else {
            setsockopt(raw_fd, libc::IPPROTO_IP, libc::IP_RECVTTL, &1i32)
        };
        // Room for bursts of replies (thousands of targets); beyond rmem_max as root.
        let buf: i32 = 8 << 20;
        if setsockopt(raw_fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buf).is_err() {
            let _ = setsockopt(raw_fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &buf);
        }
        if raw {
            // A RAW socket gets every ICMP packet the host receives: let only echo replies
            // through (ICMP_FILTER, raw(7); ICMP6_FILTER, RFC 3542 §3.2: a set bit blocks).
            if v6 {
                let mut filter = [u32::MAX; 8];
                filter[(129 >> 5) as usize] &= !(1u32 << (129 & 31));
                let _ = setsockopt(raw_fd, libc::IPPROTO_ICMPV6, 1, &filter);
            } else {
                let _ = setsockopt(raw_fd, 255, 1, &!1u32);
            }
        }
        return Ok((fd, raw));
    }
    Err(first_err.unwrap_or_else(|| io::Error::other("no ICMP socket")))
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A socket address for sendto.
fn sockaddr(addr: IpAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: an all-zero sockaddr_storage is valid; it is large and aligned enough for
    // either address type written into it.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        IpAddr::V4(a) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) };
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.octets() };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as u32)
}

/// The address in a sockaddr filled by recvmsg, if it is IPv4 or IPv6.
fn ip_of(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(ss.ss_family) {
        // SAFETY: the family says which structure the storage holds.
        libc::AF_INET => {
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// One datagram's sender and kernel receive time (ns since the epoch).
struct Received {
    from: Option<IpAddr>,
    kernel_ns: Option<i64>,
    /// The IP TTL (IPv4) or hop limit (IPv6) it arrived with.
    ttl: Option<u8>,
}

/// Datagrams taken per recvmmsg(2) call.
const BATCH: usize = 64;
/// Room for one datagram: an echo reply is 84 bytes (IPv4 with its header), 64 (IPv6).
const SLOT: usize = 2048;

/// The buffers of one recvmmsg(2) call, reused from call to call.
struct Batch {
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; 16]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` only ever point into the Batch's own
// vectors, and are rewritten before every use.
unsafe impl Send for Batch {}

impl Batch {
    fn new() -> Batch {
        // SAFETY: all-zero sockaddr_storage, iovec and mmsghdr are valid values.
        unsafe {
            Batch {
                data: vec![0u8; BATCH * SLOT],
                names: vec![zeroed(); BATCH],
                controls: vec![[0u64; 16]; BATCH],
                iovs: vec![zeroed(); BATCH],
                hdrs: vec![zeroed(); BATCH],
            }
        }
    }

    /// Receives up to [`BATCH`] datagrams without waiting (recvmmsg(2)), each with its
    /// `SCM_TIMESTAMPNS` control message; how many.
    fn recv(&mut self, fd: i32) -> io::Result<usize> {
        // SAFETY: every pointer handed to recvmmsg points into this Batch's vectors, which
        // have BATCH elements (and data BATCH * SLOT bytes) and are not resized.
        unsafe {
            for i in 0..BATCH {
                self.iovs[i] =
                    libc::iovec { iov_base: self.data.as_mut_ptr().add(i * SLOT) as *mut libc::c_void, iov_len: SLOT };
                let h = &mut self.hdrs[i];
                *h = zeroed();
                h.msg_hdr.msg_name = &mut self.names[i] as *mut _ as *mut libc::c_void;
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
                h.msg_hdr.msg_iov = &mut self.iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = self.controls[i].as_mut_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_controllen = size_of::<[u64; 16]>() as _;
            }
            let n = libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut());
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }
    }

    /// Datagram `i` of the last [`Batch::recv`].
    fn get(&self, i: usize) -> (&[u8], Received) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(SLOT);
        let mut kernel_ns = None;
        let mut ttl = None;
        // SAFETY: the control buffer was filled by the kernel for this header; the CMSG_*
        // macros stay within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    kernel_ns = Some(ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64);
                } else if ((*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TTL)
                    || ((*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_HOPLIMIT)
                {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32);
                    ttl = u8::try_from(v).ok();
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        (&self.data[i * SLOT..i * SLOT + len], Received { from: ip_of(&self.names[i]), kernel_ns, ttl })
    }
}

/// What every reply is checked against.
#[derive(Clone, Copy)]
struct Matcher {
    raw: bool,
    v6: bool,
    ident: u16,
    key: u64,
}

/// The pending probe's id and the round trip of an echo reply, or None when the
/// datagram is not a reply to this process.
fn parse_reply(m: Matcher, packet: &[u8]) -> Option<(u64, i64)> {
    // A RAW IPv4 socket hands over the IP header too (raw(7)); the others do not.
    let icmp = if m.raw && !m.v6 {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    } else {
        packet
    };
    let echo_reply = if m.v6 { 129 } else { 0 };
    if icmp.len() < 8 + 24 || icmp[0] != echo_reply || icmp[1] != 0 {
        return None;
    }
    // On a ping socket the kernel owns the identifier and delivers only this socket's replies.
    if m.raw && u16::from_be_bytes([icmp[4], icmp[5]]) != m.ident {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 8]> { icmp.get(8 + i..16 + i)?.try_into().ok() };
    if u64::from_be_bytes(word(8)?) != m.key {
        return None;
    }
    Some((u64::from_be_bytes(word(0)?), i64::from_be_bytes(word(16)?)))
}

/// Reads replies until the socket is closed, handing each round trip to its probe.
/// The reading side of one socket: the reader task drains it as replies come, and a round
/// drains it once more before it judges its probes, so a reply that arrived in time (by its
/// kernel timestamp) is never counted lost because the reader had not got to it yet.
struct Receiver {
    fd: Arc<AsyncFd<OwnedFd>>,
    m: Matcher,
    pending: PendingMap,
    batch: Mutex<Batch>,
}

impl Receiver {
    /// Receives one batch of datagrams without waiting and files the replies among them
    /// with their rounds; how many datagrams (an error, WouldBlock included, when none).
    fn drain_once(&self) -> io::Result<usize> {
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        let n = batch.recv(self.fd.get_ref().as_raw_fd())?;
        let now = Instant::now();
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..n {
            let (packet, r) = batch.get(i);
            let Some((id, sent_ns)) = parse_reply(self.m, packet) else { continue };
            let Some(p) = map.get(&id) else { continue };
            if r.from.is_some_and(|f| f != p.addr) {
                // Not from the probed address: not its answer.
                continue;
            }
            let Some(p) = map.remove(&id) else { continue };
            let user = now.saturating_duration_since(p.sent);
            let rtt = match r.kernel_ns.map(|k| k - sent_ns) {
                Some(k) if k >= 0 && (k as u128) <= user.as_nanos() => Duration::from_nanos(k as u64),
                _ => user,
            };
            if rtt <= p.timeout {
                if let Some(t) = r.ttl {
                    p.round.ttl.fetch_min(u16::from(t), Ordering::Relaxed);
                }
                let mut samples = p.round.samples.lock().unwrap_or_else(|e| e.into_inner());
                samples.push(rtt.as_secs_f64() * 1000.0);
                if samples.len() >= p.round.want.load(Ordering::Acquire) {
                    p.round.done.notify_one();
                }
            }
        }
        Ok(n)
    }

    /// Files everything the socket holds now.
    fn drain(&self) {
        while matches!(self.drain_once(), Ok(n) if n == BATCH) {}
    }
}

/// Reads replies until the socket fails.
async fn recv_loop(rx: Arc<Receiver>) {
    loop {
        let mut guard = match rx.fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "ICMP socket failed: no more replies are read");
                return;
            }
        };
        loop {
            match guard.try_io(|_| rx.drain_once()) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "ICMP receive error");
                    break;
                }
                Err(_would_block) => break,
            }
        }
    }
}

impl Icmp {
    /// Opens the IPv4 and IPv6 sockets; fails only when neither can be opened. Must run
    /// inside the tokio runtime (it starts one reader task per socket).
    pub fn new() -> Result<Icmp> {
        // Distinguishes this process's echoes from other pingers' on a RAW socket.
        let r = uuid::Uuid::new_v4().as_u128();
        let ident = (std::process::id() as u16) ^ (r as u16);
        let key = (r >> 64) as u64;
        let open = |v6: bool| -> Result<Family, String> {
            let name = if v6 { "IPv6" } else { "IPv4" };
            let (fd, raw) = open_socket(v6).map_err(|e| format!("no {name} ICMP socket: {e}"))?;
            // SAFETY: the OwnedFd keeps the descriptor open for as long as the AsyncFd holds it.
            let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| format!("no {name} ICMP socket: {e}"))?;
            let fd = Arc::new(fd);
            let rx = Arc::new(Receiver {
                fd: fd.clone(),
                m: Matcher { raw, v6, ident, key },
                pending: PendingMap::default(),
                batch: Mutex::new(Batch::new()),
            });
            let recv = tokio::spawn(recv_loop(rx.clone()));
            Ok(Family { fd, v6, rx, recv })
        };
        let (v4, v4_error) = match open(false) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        let (v6, v6_error) = match open(true) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        if v4.is_none() && v6.is_none() {
            bail!(
                "cannot open an ICMP socket ({}; {}): run as root, grant CAP_NET_RAW, or allow the group in net.ipv4.ping_group_range",
                v4_error.unwrap_or_default(),
                v6_error.unwrap_or_default()
            );
        }
        for e in [&v4_error, &v6_error].into_iter().flatten() {
            tracing::warn!(error = %e, "targets of this address family will report errors");
        }
        Ok(Icmp { v4, v6, v4_error, v6_error, ident, key, seq: AtomicU16::new(0), next_id: AtomicU64::new(0) })
    }

    /// Whether this bee has a socket for `addr`'s family.
    pub fn supports(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(_) => self.v4.is_some(),
            IpAddr::V6(_) => self.v6.is_some(),
        }
    }

    /// Sends one echo request for pending probe `id`.
    async fn send_echo(&self, fam: &Family, addr: IpAddr, id: u64) -> Result<(), String> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        // ICMP header (type, code, checksum, identifier, sequence), then the payload: probe
        // id, process key, send time (CLOCK_REALTIME ns), zeros.
        let mut pkt = [0u8; 8 + PAYLOAD_BYTES];
        pkt[0] = if fam.v6 { 128 } else { 8 };
        pkt[4..6].copy_from_slice(&self.ident.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        pkt[8..16].copy_from_slice(&id.to_be_bytes());
        pkt[16..24].copy_from_slice(&self.key.to_be_bytes());
        let (sa, sa_len) = sockaddr(addr);
        loop {
            let mut guard = fam.fd.writable().await.map_err(|e| e.to_string())?;
            let r = guard.try_io(|fd| {
                // The send time is read as late as possible: just before the packet leaves.
                pkt[24..32].copy_from_slice(&realtime_ns().to_be_bytes());
                if !fam.v6 {
                    // The kernel fills in ICMPv6 checksums (RFC 3542 §3.1) and those of
                    // ping sockets; a RAW IPv4 socket sends what it is given.
                    pkt[2..4].fill(0);
                    let c = checksum(&pkt);
                    pkt[2..4].copy_from_slice(&c.to_be_bytes());
                }
                // SAFETY: pkt and sa are live locals of the stated lengths.
                let n = unsafe {
                    libc::sendto(
                        fd.get_ref().as_raw_fd(),
                        pkt.as_ptr() as *const libc::c_void,
                        pkt.len(),
                        0,
                        &sa as *const _ as *const libc::sockaddr,
                        sa_len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match r {
                Ok(r) => return r.map_err(|e| e.to_string()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Probes `addr` `spec.probes` times, `spec.spacing` apart, each probe waiting up to
    /// `spec.timeout` for its reply (the waits overlap the next probes). The round's task
    /// only sends: the reader task files each reply's round-trip time with its round, and
    /// the round collects them once its last probe's timeout has passed (no task, timer or
    /// channel per probe, so one core keeps up with many thousands of probes a second).
    pub async fn round(&self, addr: IpAddr, spec: RoundSpec) -> RoundResult {
        self.round_planned(addr, spec, tokio::time::Instant::now()).await
    }

    /// [`Icmp::round`] for a round its scheduler planned to start at `planned`: the
    /// result's `late` is the largest delay of a probe's send past `planned` + its place ×
    /// `spec.spacing` (probes are still spaced from when the round really starts).
    pub async fn round_planned(&self, addr: IpAddr, spec: RoundSpec, planned: tokio::time::Instant) -> RoundResult {
        let mut r = RoundResult { sent: spec.probes, ..Default::default() };
        let fam = match addr {
            IpAddr::V4(_) => self.v4.as_ref().ok_or_else(|| self.v4_error.clone().unwrap_or_default()),
            IpAddr::V6(_) => self.v6.as_ref().ok_or_else(|| self.v6_error.clone().unwrap_or_default()),
        };
        let fam = match fam {
            Ok(f) => f,
            Err(e) => {
                r.send_error = Some(e);
                return r;
            }
        };
        let collected = Arc::new(Collected {
            samples: Mutex::new(Vec::with_capacity(usize::from(spec.probes))),
            want: AtomicUsize::new(usize::MAX),
            ttl: AtomicU16::new(u16::MAX),
            done: tokio::sync::Notify::new(),
        });
        let mut sent = 0;
        let mut ids = Vec::with_capacity(usize::from(spec.probes));
        let start = tokio::time::Instant::now();
        let mut last_sent = start;
        for i in 0..spec.probes {
            tokio::time::sleep_until(start + spec.spacing * u32::from(i)).await;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let pending = Pending { round: collected.clone(), addr, sent: Instant::now(), timeout: spec.timeout };
            fam.rx.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, pending);
            ids.push(id);
            r.late = r
                .late
                .max(tokio::time::Instant::now().saturating_duration_since(planned + spec.spacing * u32::from(i)));
            match self.send_echo(fam, addr, id).await {
                Ok(()) => sent += 1,
                Err(e) => r.send_error = Some(e),
            }
            last_sent = tokio::time::Instant::now();
        }
        // Done when every probe sent is answered, else when the last one's timeout passed.
        collected.want.store(sent, Ordering::Release);
        let answered = collected.samples.lock().unwrap_or_else(|e| e.into_inner()).len();
        if answered < sent {
            tokio::select! {
                _ = tokio::time::sleep_until(last_sent + spec.timeout) => {}
                _ = collected.done.notified() => {}
            }
        }
        // Replies that arrived in time but wait in the socket are filed first.
        fam.rx.drain();
        {
            let mut map = fam.rx.pending.lock().unwrap_or_else(|e| e.into_inner());
            for id in &ids {
                map.remove(id);
            }
        }
        r.samples_ms = std::mem::take(&mut *collected.samples.lock().unwrap_or_else(|e| e.into_inner()));
        r.received = r.samples_ms.len() as u16;
        r.ttl = u8::try_from(collected.ttl.load(Ordering::Relaxed)).ok();
        r
    }
}

/// How one round probes one target.
#[derive(Debug, Clone, Copy)]
pub struct RoundSpec {
    /// Probes per round (`ping -c`).
    pub probes: u16,
    /// Time between two probes of a round (`ping -i`).
    pub spacing: Duration,
    /// How long each probe waits for its reply.
    pub timeout: Duration,
}

/// The outcome of one round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundResult {
    /// Echo requests sent.
    pub sent: u16,
    /// Echo replies received in time.
    pub received: u16,
    /// Their round-trip times in ms, in the order the replies were filed.
    pub samples_ms: Vec<f64>,
    /// The last send error, if a probe could not be sent.
    pub send_error: Option<String>,
    /// The lowest TTL / hop limit of the answers; `None` when none came (or the kernel
    /// did not say).
    pub ttl: Option<u8>,
    /// How late the probes left against their schedule ([`Icmp::round_planned`]).
    pub late: Duration,
}

/// Probes `addr` as `spec` says ([`Icmp::round`]).
pub async fn round(icmp: &Arc<Icmp>, addr: IpAddr, spec: RoundSpec) -> RoundResult {
    icmp.round(addr, spec).await
}

/// Whether the system clock is synchronised (NTP): `ntp_adjtime(2)` read-only (modes 0,
/// no privilege needed) reports neither `TIME_ERROR` nor the `STA_UNSYNC` status flag —
/// what `timedatectl` shows as "System clock synchronized". `None` when the call fails.
pub fn clock_synced() -> Option<bool> {
    // SAFETY: an all-zero timex (modes 0) only reads the kernel's state into it.
    let mut tx: libc::timex = unsafe { zeroed() };
    let rc = unsafe { libc::ntp_adjtime(&mut tx) };
    (rc >= 0).then_some(rc != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

/// How a round's target was reached, for its record.
#[derive(Debug, Clone, Default)]
pub struct Reached {
    /// The address pinged (`None`: a name that did not resolve).
    pub addr: Option<IpAddr>,
    /// How long resolving the name took (`None`: the target is an address).
    pub resolve: Option<Duration>,
}

/// Resolves a target: an address literal directly, a name through the system resolver
/// (preferring a family this bee has a socket for).
pub async fn resolve(icmp: &Icmp, target: &str, timeout: Duration) -> Result<IpAddr, String> {
    if let Ok(a) = target.parse::<IpAddr>() {
        return Ok(a);
    }
    let addrs: Vec<IpAddr> = match tokio::time::timeout(timeout, tokio::net::lookup_host((target, 0))).await {
        Ok(Ok(it)) => it.map(|sa| sa.ip()).collect(),
        Ok(Err(e)) => return Err(format!("cannot resolve {target}: {e}")),
        Err(_) => return Err(format!("cannot resolve {target}: timed out after {timeout:?}")),
    };
    addrs
        .iter()
        .find(|a| icmp.supports(**a))
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve {target}: no addresses"))
}

/// Who produces the records.
#[derive(Debug, Clone)]
pub struct Agent {
    pub stack: String,
    pub region: String,
    pub agent: String,
}

impl Agent {
    /// The record of one round (schema [`record::SCHEMA`]): `error` when the target did
    /// not resolve or no probe could be sent; otherwise `ok` with the loss (1.0 when
    /// nothing answered) and RTT statistics; with what `reached` says, the round's TTL,
    /// lateness and probes sent, and whether the clock is synchronised ([`clock_synced`]).
    pub fn record(&self, target: &str, reached: &Reached, outcome: Result<RoundResult, String>) -> PingRecord {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (sent, ttl, late_ms) = match &outcome {
            Ok(r) => (Some(r.sent), r.ttl, Some(ms(r.late))),
            Err(_) => (None, None, None),
        };
        let (status, loss, rtt_ms, error) = match outcome {
            Err(e) => (Status::Error, 1.0, None, Some(e)),
            Ok(r) if r.sent == 0 => (Status::Error, 1.0, None, Some("no probes sent".to_string())),
            Ok(r) => {
                let loss = 1.0 - r.received as f64 / r.sent as f64;
                match (&r.send_error, r.received) {
                    (Some(e), 0) => (Status::Error, 1.0, None, Some(e.clone())),
                    _ => (Status::Ok, loss, Rtt::from_samples(&r.samples_ms), None),
                }
            }
        };
        PingRecord {
            id: uuid::Uuid::new_v4().to_string(),
            ts: crate::now_ts(),
            stack: self.stack.clone(),
            region: self.region.clone(),
            agent: self.agent.clone(),
            target: target.to_string(),
            status,
            loss,
            rtt_ms,
            error,
            sent,
            ttl,
            addr: reached.addr.map(|a| a.to_string()),
            resolve_ms: reached.resolve.map(ms),
            late_ms,
            clock_synced: clock_synced(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Agent {
        Agent { stack: "s".into(), region: "r".into(), agent: "bee-1".into() }
    }

    #[test]
    fn records_of_outcomes() {
        let ok = RoundResult {
            sent: 4,
            received: 3,
            samples_ms: vec![1.0, 2.0, 3.0],
            ttl: Some(63),
            late: Duration::from_micros(1500),
            ..Default::default()
        };
        let at = Reached { addr: Some("127.0.0.1".parse().unwrap()), resolve: None };
        let r = agent().record("127.0.0.1", &at, Ok(ok));
        assert_eq!((r.status, r.loss, r.schema), (Status::Ok, 0.25, record::SCHEMA));
        assert_eq!(r.rtt_ms.unwrap().avg, 2.0);
        assert_eq!(
            (r.sent, r.ttl, r.addr.as_deref(), r.late_ms, r.resolve_ms),
            (Some(4), Some(63), Some("127.0.0.1"), Some(1.5), None)
        );
        assert!(r.clock_synced.is_some(), "ntp_adjtime answers");
        r.validate().unwrap();

        let lost = RoundResult { sent: 4, ..Default::default() };
        let r = agent().record("192.0.2.1", &Reached::default(), Ok(lost));
        assert_eq!((r.status, r.loss, r.rtt_ms, r.error), (Status::Ok, 1.0, None, None));

        let unsendable =
            RoundResult { sent: 4, send_error: Some("Network is unreachable".into()), ..Default::default() };
        let r = agent().record("2001:db8::1", &Reached::default(), Ok(unsendable));
        assert_eq!(r.status, Status::Error);

        let tried = Reached { addr: None, resolve: Some(Duration::from_millis(20)) };
        let r = agent().record("nx.invalid", &tried, Err("cannot resolve nx.invalid".into()));
        assert_eq!(
            (r.status, r.loss, r.resolve_ms, r.addr.as_deref(), r.sent),
            (Status::Error, 1.0, Some(20.0), None, None)
        );
        r.validate().unwrap();
        assert!(r.error.unwrap().contains("resolve"));
    }

    #[test]
    fn replies_are_matched_by_type_identifier_and_key() {
        // RFC 1071 §3's example: the sum of these words is 0xddf2, so the checksum is its complement.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        let m = Matcher { raw: true, v6: false, ident: 0x1234, key: 0xfeed };
        let mut icmp = vec![0u8; 8 + PAYLOAD_BYTES];
        icmp[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        icmp[8..16].copy_from_slice(&7u64.to_be_bytes());
        icmp[16..24].copy_from_slice(&0xfeedu64.to_be_bytes());
        icmp[24..32].copy_from_slice(&42i64.to_be_bytes());
        // A RAW IPv4 socket delivers the IP header (20 bytes here) first.
        let mut packet = vec![0x45u8];
        packet.resize(20, 0);
        packet.extend_from_slice(&icmp);
        assert_eq!(parse_reply(m, &packet), Some((7, 42)));
        assert_eq!(parse_reply(Matcher { ident: 1, ..m }, &packet), None, "another process's echo");
        assert_eq!(parse_reply(Matcher { key: 1, ..m }, &packet), None, "another key");
        packet[20] = 8;
        assert_eq!(parse_reply(m, &packet), None, "a request is not a reply");
        packet[20] = 0;
        assert_eq!(parse_reply(m, &packet[..40]), None, "truncated");
        assert_eq!(parse_reply(m, &[]), None);
        // Ping sockets and IPv6: no IP header; the kernel owns the identifier.
        let mut v6 = icmp.clone();
        v6[0] = 129;
        assert_eq!(parse_reply(Matcher { raw: false, v6: true, ident: 0, key: 0xfeed }, &v6), Some((7, 42)));
    }

    #[tokio::test]
    async fn pings_loopback_v4_and_v6() {
        let icmp = Arc::new(Icmp::new().expect("tests run as root (ICMP sockets)"));
        let spec = RoundSpec { probes: 3, spacing: Duration::from_millis(20), timeout: Duration::from_secs(1) };
        for a in ["127.0.0.1", "127.0.0.2", "::1"] {
            let r = round(&icmp, a.parse().unwrap(), spec).await;
            assert_eq!((r.sent, r.received), (3, 3), "{a}: {r:?}");
            // Loopback replies arrive with the TTL / hop limit they left with (Linux: 64).
            assert_eq!(r.ttl, Some(64), "{a}: {r:?}");
            assert!(r.late < Duration::from_millis(500), "{a}: {r:?}");
        }
        assert!(resolve(&icmp, "nx.invalid", Duration::from_secs(5)).await.is_err());
        assert_eq!(resolve(&icmp, "::1", Duration::from_secs(1)).await.unwrap(), "::1".parse::<IpAddr>().unwrap());
    }
}
