//! A known link for the accuracy tests, built in user space (these machines have no
//! `sch_netem`, so `tc netem` is not available): a TUN device whose far side answers ICMP
//! echo requests after a known delay and drops a known fraction of them.
//!
//! The reflector opens `/dev/net/tun` (a non-persistent device `tyracc<N>`: it disappears,
//! with its address and route, when the reflector is dropped), routes a free /24 of the
//! benchmarking range 198.18.0.0/15 (RFC 2544 §C.2.2, never routed on the Internet) into
//! it, and answers every echo request to `198.18.x.(2+i)` as link `i` says:
//!
//! * delay: `delay` plus a normal draw with standard deviation `jitter` (the model of
//!   `tc netem delay D J distribution normal`), cut at zero;
//! * loss: each request is dropped with probability `loss` (a Bernoulli draw per request).
//!
//! The draws are deterministic: one stream per (target, sender) seeded from the seed and
//! the target only, so every sender to a target (the bee, `ping`) meets the same sequence
//! of delays and drops, and [`Reflector::draws`] gives a test the exact delays the first
//! `n` probes of any sender met. A sender is told apart by its ICMP identifier.
//!
//! A request's delay runs from the kernel's timestamp of its passage into the device (an
//! AF_PACKET socket on the device with `SO_TIMESTAMPNS`, taken in the sender's `sendto`),
//! not from when the reflector got to read it, and the replies are written by a thread
//! running SCHED_FIFO with a 1 ns timer slack that sleeps until shortly before the due time
//! and spins the rest: on a loaded machine the link's delays stay what they are said to be
//! (each reply's lateness is counted in [`Seen`]).

use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What one target of the link does to echo requests.
#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    /// Mean one-way-and-back delay added to every answered request.
    pub delay: Duration,
    /// Standard deviation of a normal draw added to `delay` (zero: a fixed delay).
    pub jitter: Duration,
    /// Probability 0..=1 that a request is dropped.
    pub loss: f64,
}

/// Counts of one target.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    pub requests: u64,
    pub dropped: u64,
    /// Replies written, and how late after their due time (sum and worst, in µs).
    pub replies: u64,
    pub late_us_sum: u64,
    pub late_us_max: u64,
}

/// splitmix64 (Steele, Lea, Flood 2014): small, deterministic, good enough for draws.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One probe's fate: `None` dropped, else the delay in milliseconds.
fn draw(rng: &mut Rng, spec: &LinkSpec) -> Option<f64> {
    // Three draws per request whatever the outcome, so the streams stay aligned.
    let drop = rng.unit() < spec.loss;
    let (u1, u2) = (rng.unit(), rng.unit());
    // Box-Muller: a standard normal from two uniforms.
    let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let ms = spec.delay.as_secs_f64() * 1e3 + z * spec.jitter.as_secs_f64() * 1e3;
    (!drop).then_some(ms.max(0.0))
}

/// The seed of link `i`'s streams (not of its address, which depends on the free /24).
fn stream_seed(seed: u64, i: usize) -> u64 {
    seed ^ (i as u64 + 1).wrapping_mul(0x9e3779b97f4a7c15)
}

struct Due {
    dst: Ipv4Addr,
    at: Instant,
    n: u64,
    packet: Vec<u8>,
}
impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.n) == (o.at, o.n)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    // Earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.n).cmp(&(self.at, self.n))
    }
}

struct Shared {
    stop: AtomicBool,
    queue: Mutex<BinaryHeap<Due>>,
    wake: Condvar,
    seen: Mutex<HashMap<Ipv4Addr, Seen>>,
}

/// A running reflector; dropping it removes the device.
pub struct Reflector {
    /// The TUN device's name.
    pub ifname: String,
    /// The first three octets of the /24 routed into the device.
    net: [u8; 3],
    links: Vec<LinkSpec>,
    seed: u64,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Whether the threads got SCHED_FIFO (false: they run at normal priority).
    pub realtime: bool,
}

const TUNSETIFF: libc::c_ulong = 0x400454ca;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        format!("cannot run `ip` ({e}): the reflector needs iproute2 (apt-get install iproute2) and root")
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Reflector {
    /// Creates the device and starts answering; `links[i]` is target `198.18.x.(2+i)`.
    /// Panics (failing the test) when the device cannot be made: this needs root.
    pub fn start(links: Vec<LinkSpec>, seed: u64) -> Reflector {
        assert!(!links.is_empty() && links.len() < 250, "1 to 249 links");
        let tun = File::options()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap_or_else(|e| panic!("cannot open /dev/net/tun ({e}): the accuracy tests run as root"));
        // struct ifreq: a 16-byte name, then the flags (a short) in the union.
        let mut ifr = [0u8; 40];
        ifr[..9].copy_from_slice(b"tyracc%d\0");
        let flags: libc::c_short = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough for.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
        assert!(rc == 0, "TUNSETIFF failed: {}", std::io::Error::last_os_error());
        let ifname = String::from_utf8_lossy(&ifr[..ifr.iter().position(|&b| b == 0).unwrap_or(16)]).into_owned();
        // No IPv6 chatter (router solicitations) on the device.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"), "1");
        ip(&["link", "set", "dev", &ifname, "up"]).unwrap();
        // Claim a /24 nobody routes yet: `ip route add` refuses one that exists.
        let start = (std::process::id() as usize).wrapping_mul(7) % 512;
        let mut net = None;
        let mut last_err = String::new();
        for k in 0..512 {
            let i = (start + k) % 512;
            let n = [198, 18 + (i / 256) as u8, (i % 256) as u8];
            let local = format!("{}.{}.{}.1", n[0], n[1], n[2]);
            let prefix = format!("{}.{}.{}.0/24", n[0], n[1], n[2]);
            if let Err(e) = ip(&["addr", "add", &format!("{local}/32"), "dev", &ifname]) {
                last_err = e;
                continue;
            }
            match ip(&["route", "add", &prefix, "dev", &ifname, "src", &local]) {
                Ok(()) => {
                    net = Some(n);
                    break;
                }
                Err(e) => {
                    last_err = e;
                    let _ = ip(&["addr", "del", &format!("{local}/32"), "dev", &ifname]);
                }
            }
        }
        let net = net.unwrap_or_else(|| panic!("no free /24 in 198.18.0.0/15 for the reflector: {last_err}"));

        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            seen: Mutex::new(HashMap::new()),
        });
        let taps = packet_socket(&ifname);
        let tun = Arc::new(tun);
        let rt = Arc::new(AtomicBool::new(true));
        let reader = {
            let (shared, links, rt) = (shared.clone(), links.clone(), rt.clone());
            std::thread::spawn(move || {
                rt.fetch_and(realtime(), Ordering::Relaxed);
                read_loop(&taps, &shared, net, &links, seed)
            })
        };
        // What the kernel queues on the device is only read to keep its queue empty.
        let drain = {
            let (tun, shared, rt) = (tun.clone(), shared.clone(), rt.clone());
            std::thread::spawn(move || {
                rt.fetch_and(realtime(), Ordering::Relaxed);
                let mut buf = vec![0u8; 65536];
                while !shared.stop.load(Ordering::Relaxed) {
                    if readable(tun.as_raw_fd()) {
                        let _ = (&*tun).read(&mut buf);
                    }
                }
            })
        };
        let writer = {
            let (tun, shared, rt) = (tun.clone(), shared.clone(), rt.clone());
            std::thread::spawn(move || {
                rt.fetch_and(realtime(), Ordering::Relaxed);
                write_loop(&tun, &shared)
            })
        };
        // Both threads set their priority first thing; wait for that.
        std::thread::sleep(Duration::from_millis(20));
        let realtime = rt.load(Ordering::Relaxed);
        Reflector { ifname, net, links, seed, shared, threads: vec![reader, drain, writer], realtime }
    }

    /// The address of link `i`.
    pub fn target(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 2 + i as u8)
    }

    /// The fates the first `n` probes of any one sender to link `i` meet: `None` dropped,
    /// else the delay added in milliseconds.
    pub fn draws(&self, i: usize, n: usize) -> Vec<Option<f64>> {
        let mut rng = Rng(stream_seed(self.seed, i));
        (0..n).map(|_| draw(&mut rng, &self.links[i])).collect()
    }

    /// Requests seen and dropped for link `i`, all senders together.
    pub fn seen(&self, i: usize) -> Seen {
        self.shared.seen.lock().unwrap().get(&self.target(i)).copied().unwrap_or_default()
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// SCHED_FIFO and a 1 ns timer slack for the calling thread; false when refused.
fn realtime() -> bool {
    // SAFETY: plain syscalls on the calling thread with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        let p = libc::sched_param { sched_priority: 20 };
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &p) == 0
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Waits up to 100 ms for `fd` to be readable.
fn readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 100) > 0 }
}

/// An AF_PACKET socket (packet(7)) seeing the packets that pass through `ifname`, with
/// kernel timestamps (ETH_P_ALL: a socket for one protocol sees only incoming packets).
fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2), then a descriptor nobody else owns.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, i32::from(proto)) };
    assert!(fd >= 0, "cannot open an AF_PACKET socket: {}", std::io::Error::last_os_error());
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).expect("a device name");
    // SAFETY: plain calls with valid arguments; sockaddr_ll is fully initialised.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert!(rc == 0, "cannot bind the AF_PACKET socket to {ifname}: {}", std::io::Error::last_os_error());
        let one = 1i32;
        let rc = libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &one as *const i32 as *const libc::c_void,
            4,
        );
        assert!(rc == 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
    }
    fd
}

/// One packet and how long ago (by the kernel's timestamp) it passed the device.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> Option<(usize, Duration)> {
    // SAFETY: every pointer handed to recvmsg points into a live local of the stated size;
    // the control messages are walked with the CMSG_* macros within `control`.
    unsafe {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of::<[u64; 16]>() as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return None;
        }
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
        let mut ago = Duration::ZERO;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                let ns = (now.tv_sec - ts.tv_sec) as i64 * 1_000_000_000 + (now.tv_nsec - ts.tv_nsec) as i64;
                ago = Duration::from_nanos(ns.max(0) as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Some((n as usize, ago))
    }
}

fn read_loop(taps: &OwnedFd, shared: &Shared, net: [u8; 3], links: &[LinkSpec], seed: u64) {
    let mut streams: HashMap<(Ipv4Addr, u16), Rng> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        if !readable(taps.as_raw_fd()) {
            continue;
        }
        let Some((len, ago)) = recv_stamped(taps.as_raw_fd(), &mut buf) else { continue };
        // When the request passed into the device.
        let now = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        let p = &buf[..len];
        // IPv4, ICMP, echo request (type 8, code 0), to one of our targets.
        if len < 20 || p[0] >> 4 != 4 || p[9] != 1 {
            continue;
        }
        let ihl = usize::from(p[0] & 0xf) * 4;
        if len < ihl + 8 || p[ihl] != 8 || p[ihl + 1] != 0 || p[16..19] != net {
            continue;
        }
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let Some(i) = usize::from(p[19]).checked_sub(2).filter(|i| *i < links.len()) else { continue };
        let spec = &links[i];
        let ident = u16::from_be_bytes([p[ihl + 4], p[ihl + 5]]);
        let rng = streams.entry((dst, ident)).or_insert_with(|| Rng(stream_seed(seed, i)));
        let fate = draw(rng, spec);
        {
            let mut seen = shared.seen.lock().unwrap();
            let s = seen.entry(dst).or_default();
            s.requests += 1;
            s.dropped += u64::from(fate.is_none());
        }
        let Some(ms) = fate else { continue };
        // The reply: addresses swapped, a fresh TTL, type 0; both checksums again.
        let mut r = p.to_vec();
        r[12..16].copy_from_slice(&p[16..20]);
        r[16..20].copy_from_slice(&p[12..16]);
        r[8] = 64;
        r[10..12].fill(0);
        let c = checksum(&r[..ihl]);
        r[10..12].copy_from_slice(&c.to_be_bytes());
        r[ihl] = 0;
        r[ihl + 2..ihl + 4].fill(0);
        let c = checksum(&r[ihl..]);
        r[ihl + 2..ihl + 4].copy_from_slice(&c.to_be_bytes());
        n += 1;
        shared.queue.lock().unwrap().push(Due { dst, at: now + Duration::from_secs_f64(ms / 1e3), n, packet: r });
        shared.wake.notify_one();
    }
}

/// How long before a reply's due time the writer stops sleeping and spins.
const SPIN: Duration = Duration::from_micros(200);

fn write_loop(tun: &File, shared: &Shared) {
    let mut q = shared.queue.lock().unwrap();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match q.peek().map(|d| d.at) {
            Some(at) if at <= now + SPIN => {
                while Instant::now() < at {
                    std::hint::spin_loop();
                }
                let now = Instant::now();
                let d = q.pop().expect("peeked");
                drop(q);
                let _ = (&*tun).write(&d.packet);
                let late = now.saturating_duration_since(d.at).as_micros() as u64;
                {
                    let mut seen = shared.seen.lock().unwrap();
                    let s = seen.entry(d.dst).or_default();
                    s.replies += 1;
                    s.late_us_sum += late;
                    s.late_us_max = s.late_us_max.max(late);
                }
                q = shared.queue.lock().unwrap();
            }
            Some(at) => q = shared.wake.wait_timeout(q, at - now - SPIN).unwrap().0,
            None => q = shared.wake.wait_timeout(q, Duration::from_millis(100)).unwrap().0,
        }
    }
}
