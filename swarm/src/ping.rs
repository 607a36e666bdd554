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
//!
//! The cost of a probe (the bee's goal is 100,000 a second on one core, issue 13): a round
//! is a slot in its socket's table (a slab: the probe id in the payload is the slot, the
//! slot's generation and the probe's place, so a reply is filed by index, without a map),
//! and its probes and end are entries in a millisecond timer wheel (`Wheel`). One sender
//! task per socket sends every round's probes when due, one `sendto(2)` each with the
//! send time read just before it (a `sendmmsg(2)` batch would put the later probes' send
//! times early by the time the kernel takes over the earlier ones: on loopback, where the
//! echo reply is made and delivered inside the send, about 7 µs a probe in a perf
//! profile). One reader task per socket takes replies in batches (`recvmmsg(2)`), and the
//! sender reads the socket too after each batch it sends and before it ends any round. So
//! a probe costs no task, timer, channel or allocation of its own; what is left is mostly
//! the kernel's (a perf profile at 50,000 probes/s on loopback: three quarters of the
//! bee's time in the kernel, three quarters of that inside `sendto`, which on loopback
//! includes making and delivering the reply).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use record::{PingRecord, Rtt, Status};
use tokio::io::unix::AsyncFd;

/// Bytes of echo payload after the 8-byte ICMP header: 56, as `ping`'s default (84-byte
/// IPv4 packets). Holds the probe id, the process key and the send time.
pub const PAYLOAD_BYTES: usize = 56;

/// Milliseconds the [`Wheel`] holds in its buckets; later entries wait in a heap.
const WHEEL_MS: u64 = 1024;

/// The schedule of one socket: the rounds' next probes and ends ([`probe_id`]s, an end
/// with the place [`DEADLINE`]), by the millisecond. An entry is due from the first
/// millisecond boundary at or after its time (never early; tokio's timers have the same
/// 1 ms grain), so taking and putting one costs a vector push and pop instead of a heap's
/// log n steps (the heap was 5% of the bee's time at 50,000 probes/s in a perf profile).
struct Wheel {
    /// `buckets[m % WHEEL_MS]`: the entries of millisecond `m`, for `m` from `cursor` to
    /// `cursor + WHEEL_MS - 1`.
    buckets: Vec<VecDeque<u64>>,
    /// The earliest millisecond whose bucket may hold entries.
    cursor: u64,
    /// Entries of `cursor + WHEEL_MS` and later: (millisecond, id).
    later: BinaryHeap<Reverse<(u64, u64)>>,
    /// Entries in the buckets.
    held: usize,
}

impl Wheel {
    fn new() -> Wheel {
        Wheel { buckets: vec![VecDeque::new(); WHEEL_MS as usize], cursor: 0, later: BinaryHeap::new(), held: 0 }
    }

    /// Puts `id` in millisecond `ms` (in the current one when `ms` has passed).
    fn put(&mut self, ms: u64, id: u64) {
        let ms = ms.max(self.cursor);
        if ms - self.cursor < WHEEL_MS {
            self.buckets[(ms % WHEEL_MS) as usize].push_back(id);
            self.held += 1;
        } else {
            self.later.push(Reverse((ms, id)));
        }
    }

    /// Takes an entry due by millisecond `now` (inclusive), if any.
    fn take(&mut self, now: u64) -> Option<u64> {
        while self.cursor <= now {
            // First in, first out: a late round's next probe, put in the current
            // millisecond, waits behind the probes that were already due.
            if let Some(id) = self.buckets[(self.cursor % WHEEL_MS) as usize].pop_front() {
                self.held -= 1;
                return Some(id);
            }
            // The next millisecond, or with empty buckets the next that can hold anything
            // (an idle hour is not walked through a millisecond at a time).
            self.cursor = match self.later.peek() {
                _ if self.held > 0 => self.cursor + 1,
                Some(Reverse((ms, _))) => (*ms).min(now.saturating_add(1)),
                None => now.saturating_add(1),
            }
            .max(self.cursor + 1);
            let reach = self.cursor.saturating_add(WHEEL_MS - 1);
            while let Some(&Reverse((ms, id))) = self.later.peek().filter(|Reverse((ms, _))| *ms <= reach) {
                self.later.pop();
                self.buckets[(ms.max(self.cursor) % WHEEL_MS) as usize].push_back(id);
                self.held += 1;
            }
        }
        None
    }

    /// The earliest millisecond holding an entry, if any.
    fn next(&self) -> Option<u64> {
        (self.cursor..self.cursor + WHEEL_MS)
            .find(|m| !self.buckets[(m % WHEEL_MS) as usize].is_empty())
            .or_else(|| self.later.peek().map(|Reverse((ms, _))| *ms))
    }
}

/// The place in a schedule entry of a round's end: its last probe's timeout has passed.
const DEADLINE: u16 = (1 << PLACE_BITS) - 1;

/// Bits of a probe id ([`probe_id`]) that hold the probe's place in its round: up to
/// 1,023 probes (the bee allows 1,000; the last value is [`DEADLINE`]).
const PLACE_BITS: u32 = 10;
/// Bits of a probe id that hold its round's slot: up to 4,194,304 rounds in flight at once
/// on one socket (one per target).
const SLOT_BITS: u32 = 22;

/// The id carried in a probe's payload: its round's slot and generation (so a reply to a
/// round that has ended never reaches the round that took its slot next) and its place.
fn probe_id(slot: u32, gen: u32, place: u16) -> u64 {
    (u64::from(slot) << (32 + PLACE_BITS)) | (u64::from(gen) << PLACE_BITS) | u64::from(place)
}

/// The (slot, generation, place) of a probe id made by [`probe_id`].
fn split_id(id: u64) -> (u32, u32, u16) {
    let place = (id & ((1 << PLACE_BITS) - 1)) as u16;
    let gen = (id >> PLACE_BITS) as u32;
    let slot = (id >> (32 + PLACE_BITS)) as u32;
    (slot, gen, place)
}

/// A probe handed to the socket.
#[derive(Clone, Copy)]
struct Probe {
    /// Monotonic time taken before it was sent: an upper bound of its round trip.
    sent: Instant,
    /// Whether a reply to it was seen (in time or not): one answer per probe.
    replied: bool,
}

/// One round in flight: its probes' send times and the answers filed so far (what the
/// sender and the reader touch for every probe comes first).
struct Round {
    gen: u32,
    addr: IpAddr,
    spec: RoundSpec,
    /// When its first probe was due; probe `i` is due at `start + i × spacing`.
    start: Instant,
    /// When its scheduler planned it to start (for [`RoundResult::late`]).
    planned: Instant,
    /// The probes handed to the socket so far, in order.
    probes: Vec<Probe>,
    /// Probes the kernel accepted.
    sent_ok: u16,
    /// Whether every probe was handed to the socket and its send's outcome is known.
    all_sent: bool,
    result: RoundResult,
    /// The lowest TTL / hop limit of the answers (u16::MAX: none known).
    ttl: u16,
    /// Where the result goes when the round ends.
    done: Option<tokio::sync::oneshot::Sender<RoundResult>>,
}

/// The rounds in flight on one socket, by slot, and their schedule.
struct Table {
    /// The origin of the schedule's times.
    epoch: Instant,
    slots: Vec<Option<Round>>,
    /// The generation the next round in each slot gets.
    gens: Vec<u32>,
    free: Vec<u32>,
    wheel: Wheel,
    /// The millisecond the sender task sleeps until (u64::MAX: until it is woken; 0: it
    /// is awake and looks at the wheel before it sleeps again). An entry put earlier
    /// than this wakes it.
    sleeps_until: u64,
    /// Whether an entry was put earlier than `sleeps_until` since the sender last looked.
    wake_sender: bool,
}

impl Table {
    fn new() -> Table {
        Table {
            epoch: Instant::now(),
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            wheel: Wheel::new(),
            sleeps_until: 0,
            wake_sender: false,
        }
    }

    /// The millisecond of the schedule `t` falls in, rounded up (ms since the epoch).
    fn ms_of(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(ns.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// The millisecond `t` has reached (ms since the epoch, rounded down).
    fn ms_now(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The time schedule millisecond `ms` begins.
    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Puts a round's probe `what` (or its [`DEADLINE`]) in the schedule at `t` (noting
    /// in `wake_sender` when the sender task sleeps past it).
    fn schedule(&mut self, t: Instant, slot: u32, gen: u32, what: u16) {
        let ms = self.ms_of(t);
        self.wheel.put(ms, probe_id(slot, gen, what));
        self.wake_sender |= ms < self.sleeps_until;
    }

    /// The round in `slot` if it is generation `gen`.
    fn round(&mut self, slot: u32, gen: u32) -> Option<&mut Round> {
        self.slots.get_mut(slot as usize)?.as_mut().filter(|r| r.gen == gen)
    }

    /// Ends the round in `slot` (generation `gen`) and hands its result to its waiter.
    fn finish(&mut self, slot: u32, gen: u32) {
        if self.round(slot, gen).is_none() {
            return;
        }
        let Some(r) = self.slots.get_mut(slot as usize).and_then(Option::take) else { return };
        self.free.push(slot);
        let mut result = r.result;
        result.received = result.samples_ms.len() as u16;
        result.ttl = u8::try_from(r.ttl).ok();
        if let Some(done) = r.done {
            // The round's task may be gone (its target was dropped): nobody to tell.
            let _ = done.send(result);
        }
    }

    /// Ends the round in `slot` if every probe the kernel accepted is answered in time.
    fn finish_if_answered(&mut self, slot: u32, gen: u32) {
        if self.round(slot, gen).is_some_and(|r| r.all_sent && r.result.samples_ms.len() >= usize::from(r.sent_ok)) {
            self.finish(slot, gen);
        }
    }

    /// Hands out the next due probe of the round in `slot` at `now`: records its send
    /// time and lateness, schedules the probe after it; the probe's id and address.
    fn hand_out(&mut self, slot: u32, gen: u32, now: Instant) -> Option<Out> {
        let r = self.round(slot, gen)?;
        let place = u16::try_from(r.probes.len()).ok()?;
        if place >= r.spec.probes {
            return None;
        }
        r.probes.push(Probe { sent: now, replied: false });
        let due = r.planned + r.spec.spacing * u32::from(place);
        r.result.late = r.result.late.max(now.saturating_duration_since(due));
        let out = Out { id: probe_id(slot, gen, place), addr: r.addr, slot, gen, last: place + 1 == r.spec.probes };
        if !out.last {
            let at = r.start + r.spec.spacing * u32::from(place + 1);
            self.schedule(at, slot, gen, place + 1);
        }
        Some(out)
    }

    /// Files how the send of `out` went; after a round's last probe, schedules its end
    /// (`timeout` after `now`, when the send returned).
    fn sent(&mut self, out: &Out, outcome: Result<(), String>, now: Instant) {
        let Some(r) = self.round(out.slot, out.gen) else { return };
        match outcome {
            Ok(()) => r.sent_ok += 1,
            Err(e) => r.result.send_error = Some(e),
        }
        if out.last {
            r.all_sent = true;
            let at = now + r.spec.timeout;
            self.schedule(at, out.slot, out.gen, DEADLINE);
            self.finish_if_answered(out.slot, out.gen);
        }
    }
}

/// A probe handed to the socket: what its send needs.
struct Out {
    id: u64,
    addr: IpAddr,
    slot: u32,
    gen: u32,
    /// Its round's last probe.
    last: bool,
}

/// One address family's socket, its rounds in flight and its reading buffers, shared by
/// the rounds' tasks, the sender task and the reader task.
struct Shared {
    fd: AsyncFd<OwnedFd>,
    m: Matcher,
    table: Mutex<Table>,
    batch: Mutex<Batch>,
    /// Tells the sender task that a probe is due before what it sleeps for.
    wake: tokio::sync::Notify,
    /// The ICMP sequence number of the next echo request.
    seq: AtomicU16,
}

/// One address family's socket and the tasks serving it.
struct Family {
    sh: Arc<Shared>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Family {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The ICMP sockets of one bee.
pub struct Icmp {
    v4: Option<Family>,
    v6: Option<Family>,
    v4_error: Option<String>,
    v6_error: Option<String>,
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
        // Room for bursts of replies and of requests (thousands of targets): socket(7)
        // SO_RCVBUF / SO_SNDBUF, beyond rmem_max / wmem_max with CAP_NET_ADMIN (the
        // *FORCE options), else up to those limits.
        let buf: i32 = 8 << 20;
        for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
            if setsockopt(raw_fd, libc::SOL_SOCKET, force, &buf).is_err() {
                let _ = setsockopt(raw_fd, libc::SOL_SOCKET, plain, &buf);
            }
        }
        if !v6 {
            // Don't Fragment on every echo request (as `ping`'s default, `-M want`, sets it
            // on a packet this small): with IP_PMTUDISC_DO (ip(7)) the kernel also gives a
            // DF packet the IP id 0 instead of drawing one from its shared id generator for
            // each send (`__ip_select_ident`: 3% of a send's kernel time in a perf profile).
            let _ = setsockopt(raw_fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &libc::IP_PMTUDISC_DO);
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

/// Probes a sender task hands to the socket before it reads the replies that came
/// meanwhile and lets other tasks run.
const SEND_BATCH: usize = 64;

/// A lock, whether or not another holder panicked (the tables stay consistent: every
/// change to them is a single step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Sends the echo request of `out` with sendto(2), without waiting; the send time in
    /// its payload is read just before the call.
    fn send(&self, out: &Out) -> io::Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        // ICMP header (type, code, checksum, identifier, sequence), then the payload: probe
        // id, process key, send time (CLOCK_REALTIME ns), zeros.
        let mut pkt = [0u8; 8 + PAYLOAD_BYTES];
        pkt[0] = if self.m.v6 { 128 } else { 8 };
        pkt[4..6].copy_from_slice(&self.m.ident.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        pkt[8..16].copy_from_slice(&out.id.to_be_bytes());
        pkt[16..24].copy_from_slice(&self.m.key.to_be_bytes());
        // The send time is read as late as possible: just before the packet leaves.
        pkt[24..32].copy_from_slice(&realtime_ns().to_be_bytes());
        if !self.m.v6 {
            // The kernel fills in ICMPv6 checksums (RFC 3542 §3.1) and those of ping
            // sockets; a RAW IPv4 socket sends what it is given.
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        let (sa, sa_len) = sockaddr(out.addr);
        // SAFETY: pkt and sa are live for the call, of the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.get_ref().as_raw_fd(),
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
    }

    /// Sends `out`, waiting for room in the socket's send buffer while it is full
    /// (`EAGAIN`, socket(7) `SO_SNDBUF`); a failure as text, for the round's record.
    async fn send_ready(&self, out: &Out) -> Result<(), String> {
        loop {
            let mut guard = self.fd.writable().await.map_err(|e| e.to_string())?;
            match guard.try_io(|_| self.send(out)) {
                Ok(r) => return r.map_err(|e| e.to_string()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one batch of datagrams without waiting and files the replies among them
    /// with their rounds; how many datagrams (an error, WouldBlock included, when none).
    fn drain_once(&self) -> io::Result<usize> {
        let mut batch = lock(&self.batch);
        let n = batch.recv(self.fd.get_ref().as_raw_fd())?;
        let now = Instant::now();
        let mut t = lock(&self.table);
        for i in 0..n {
            let (packet, r) = batch.get(i);
            let Some((id, sent_ns)) = parse_reply(self.m, packet) else { continue };
            let (slot, gen, place) = split_id(id);
            let Some(round) = t.round(slot, gen) else { continue };
            let place = usize::from(place);
            let Some(&Probe { sent, replied: false }) = round.probes.get(place) else { continue };
            if r.from.is_some_and(|f| f != round.addr) {
                // Not from the probed address: not its answer.
                continue;
            }
            if let Some(p) = round.probes.get_mut(place) {
                p.replied = true;
            }
            let user = now.saturating_duration_since(sent);
            let rtt = match r.kernel_ns.map(|k| k - sent_ns) {
                Some(k) if k >= 0 && (k as u128) <= user.as_nanos() => Duration::from_nanos(k as u64),
                _ => user,
            };
            if rtt <= round.spec.timeout {
                if let Some(ttl) = r.ttl {
                    round.ttl = round.ttl.min(u16::from(ttl));
                }
                round.result.samples_ms.push(rtt.as_secs_f64() * 1000.0);
                t.finish_if_answered(slot, gen);
            }
        }
        Ok(n)
    }

    /// Files everything the socket holds now.
    fn drain(&self) {
        while matches!(self.drain_once(), Ok(n) if n == BATCH) {}
    }
}

/// Reads replies as they come until the socket fails.
async fn recv_loop(sh: Arc<Shared>) {
    loop {
        let mut guard = match sh.fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "ICMP socket failed: no more replies are read");
                return;
            }
        };
        loop {
            match guard.try_io(|_| sh.drain_once()) {
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

/// Sends every round's probes when they are due and ends the rounds whose last probe's
/// timeout has passed, after filing the replies the socket holds (so a reply that came in
/// time is never counted lost because it was read late). One task per socket: a probe
/// costs no task, timer or allocation of its own.
async fn send_loop(sh: Arc<Shared>) {
    let mut expired = Vec::new();
    loop {
        let mut handed = 0;
        let next = loop {
            let out = {
                let mut t = lock(&sh.table);
                let now = Instant::now();
                let now_ms = t.ms_now(now);
                let Some(id) = (handed < SEND_BATCH).then(|| t.wheel.take(now_ms)).flatten() else {
                    let next = t.wheel.next();
                    if handed < SEND_BATCH {
                        // About to sleep (after reading replies): a round putting an entry
                        // before `next` wakes it.
                        t.sleeps_until = next.unwrap_or(u64::MAX);
                        t.wake_sender = false;
                    }
                    break next.map(|ms| t.instant(ms));
                };
                t.sleeps_until = 0;
                let (slot, gen, what) = split_id(id);
                if what == DEADLINE {
                    expired.push((slot, gen));
                    continue;
                }
                match t.hand_out(slot, gen, now) {
                    Some(out) => out,
                    None => continue,
                }
            };
            handed += 1;
            let outcome = sh.send_ready(&out).await;
            lock(&sh.table).sent(&out, outcome, Instant::now());
        };
        sh.drain();
        if !expired.is_empty() {
            let mut t = lock(&sh.table);
            for (slot, gen) in expired.drain(..) {
                t.finish(slot, gen);
            }
        }
        match next {
            _ if handed >= SEND_BATCH => tokio::task::yield_now().await,
            None => sh.wake.notified().await,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    _ = sh.wake.notified() => {}
                }
            }
        }
    }
}

/// A round's place in its socket's table while its task waits: a task dropped mid-round
/// (its target removed) takes its round, and the rest of its probes, with it.
struct Registered<'a> {
    sh: &'a Shared,
    slot: u32,
    gen: u32,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut t = lock(&self.sh.table);
        if t.round(self.slot, self.gen).is_some() {
            if let Some(s) = t.slots.get_mut(self.slot as usize) {
                *s = None;
            }
            t.free.push(self.slot);
        }
    }
}

impl Icmp {
    /// Opens the IPv4 and IPv6 sockets; fails only when neither can be opened. Must run
    /// inside the tokio runtime (it starts a reader and a sender task per socket).
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
            let sh = Arc::new(Shared {
                fd,
                m: Matcher { raw, v6, ident, key },
                table: Mutex::new(Table::new()),
                batch: Mutex::new(Batch::new()),
                wake: tokio::sync::Notify::new(),
                seq: AtomicU16::new(0),
            });
            let tasks = [tokio::spawn(recv_loop(sh.clone())), tokio::spawn(send_loop(sh.clone()))];
            Ok(Family { sh, tasks })
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
        Ok(Icmp { v4, v6, v4_error, v6_error })
    }

    /// Whether this bee has a socket for `addr`'s family.
    pub fn supports(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(_) => self.v4.is_some(),
            IpAddr::V6(_) => self.v6.is_some(),
        }
    }

    /// Probes `addr` `spec.probes` times, `spec.spacing` apart, each probe waiting up to
    /// `spec.timeout` for its reply (the waits overlap the next probes). The round's task
    /// sends its first probe and waits: the socket's sender task sends the others when
    /// they are due, its reader task files each reply's round-trip time with its round,
    /// and the round ends when every probe sent is answered or its last probe's timeout
    /// has passed (no task, timer or channel per probe, so one core keeps up with many
    /// thousands of probes a second).
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
        let sh = match fam {
            Ok(f) => &*f.sh,
            Err(e) => {
                r.send_error = Some(e);
                return r;
            }
        };
        if spec.probes == 0 || spec.probes >= DEADLINE {
            r.send_error = Some(format!("{} probes in a round: 1 to {} are possible", spec.probes, DEADLINE - 1));
            return r;
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let start = Instant::now();
        let (slot, gen, first) = {
            let mut t = lock(&sh.table);
            let slot = match t.free.pop() {
                Some(s) => s,
                None if t.slots.len() < 1 << SLOT_BITS => {
                    t.slots.push(None);
                    t.gens.push(0);
                    (t.slots.len() - 1) as u32
                }
                None => {
                    r.send_error = Some(format!("more than {} rounds in flight at once", 1 << SLOT_BITS));
                    return r;
                }
            };
            let gen = t.gens[slot as usize];
            t.gens[slot as usize] = gen.wrapping_add(1);
            t.slots[slot as usize] = Some(Round {
                gen,
                addr,
                spec,
                start,
                planned: planned.into_std(),
                probes: Vec::with_capacity(usize::from(spec.probes)),
                sent_ok: 0,
                all_sent: false,
                result: RoundResult {
                    sent: spec.probes,
                    samples_ms: Vec::with_capacity(usize::from(spec.probes)),
                    ..Default::default()
                },
                ttl: u16::MAX,
                done: Some(done),
            });
            (slot, gen, t.hand_out(slot, gen, start))
        };
        let _registered = Registered { sh, slot, gen };
        if let Some(out) = first {
            let outcome = sh.send_ready(&out).await;
            let mut t = lock(&sh.table);
            t.sent(&out, outcome, Instant::now());
            // The sender task sleeps until the earliest probe or end it knows of: wake it
            // when this round's is earlier.
            if std::mem::take(&mut t.wake_sender) {
                sh.wake.notify_one();
            }
        }
        result.await.unwrap_or_else(|_| RoundResult { send_error: Some("the ICMP sender stopped".to_string()), ..r })
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

/// [`clock_synced`] as it was at most a second ago: a bee makes a record per target and
/// round (10,000 a second at 100,000 probes/s), and the kernel's clock state need not be
/// asked for each (the call was 1% of such a bee's time in a perf profile).
fn clock_synced_recent() -> Option<bool> {
    // (CLOCK_MONOTONIC_COARSE seconds + 1) << 2 | the answer (0 None, 1 false, 2 true);
    // 0 before the first call.
    static LAST: AtomicU64 = AtomicU64::new(0);
    // SAFETY: clock_gettime writes one timespec.
    let mut ts: libc::timespec = unsafe { zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let second = (ts.tv_sec as u64).wrapping_add(1);
    let last = LAST.load(Ordering::Relaxed);
    if last >> 2 == second {
        return [None, Some(false), Some(true)].get((last & 3) as usize).copied().flatten();
    }
    let now = clock_synced();
    let code = match now {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    };
    LAST.store(second << 2 | code, Ordering::Relaxed);
    now
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
    /// lateness and probes sent, and whether the clock is synchronised ([`clock_synced`],
    /// as it was at most a second before).
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
            clock_synced: clock_synced_recent(),
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

    #[test]
    fn probe_ids_carry_slot_generation_and_place() {
        for (slot, gen, place) in [(0, 0, 0), (1, 2, 3), ((1 << SLOT_BITS) - 1, u32::MAX, DEADLINE), (77, 1 << 31, 999)]
        {
            assert_eq!(split_id(probe_id(slot, gen, place)), (slot, gen, place));
        }
        assert_ne!(probe_id(5, 1, 0), probe_id(5, 2, 0), "a slot's next round has other ids");
    }

    #[test]
    fn the_wheel_gives_entries_when_due_first_in_first_out() {
        let mut w = Wheel::new();
        assert_eq!((w.take(0), w.next()), (None, None));
        w.put(5, 1);
        w.put(3, 2);
        w.put(5, 3);
        w.put(3 + 5 * WHEEL_MS, 4); // beyond the buckets' reach: in the heap
        assert_eq!(w.next(), Some(3));
        assert_eq!(w.take(2), None, "nothing before its millisecond");
        assert_eq!(w.take(3), Some(2));
        assert_eq!(w.take(4), None);
        assert_eq!(w.next(), Some(5));
        // A late entry (its millisecond passed) goes behind those already due.
        w.put(1, 5);
        assert_eq!([w.take(10), w.take(10), w.take(10), w.take(10)], [Some(1), Some(3), Some(5), None]);
        assert_eq!(w.next(), Some(3 + 5 * WHEEL_MS));
        assert_eq!(w.take(3 + 5 * WHEEL_MS - 1), None);
        assert_eq!(w.take(3 + 5 * WHEEL_MS), Some(4));
        assert_eq!((w.take(u64::MAX / 2), w.next()), (None, None));
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
