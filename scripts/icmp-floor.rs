//! The kernel's floor for a pinger on this machine: what one core does when the program
//! does nothing but send ICMP echo requests and read the replies — no schedule, no
//! timers, no records, no MQTT. `scripts/bench-swarm` (the `onecore` part) builds it with
//! `rustc -O` (std only: the few libc calls are declared below) and runs it pinned to the
//! bee's CPU over the same targets, beside the bee and fping, so that the bee's probes/s
//! can be read against the most any pinger could do here.
//!
//! Usage: `icmp-floor TARGETS_FILE SECONDS [WINDOW]` (one IPv4 address a line; WINDOW,
//! default 2000, is how many probes may be unanswered at once). It opens one socket as the
//! bee does (a ping socket when `net.ipv4.ping_group_range` allows, else RAW with only echo
//! replies let through; `SO_TIMESTAMPNS`, `IP_RECVTTL` and an 8 MiB receive buffer, so each reply costs
//! what it costs the bee), sends the 56-byte echo requests round-robin while fewer than
//! WINDOW are unanswered, reads replies 64 at a time (`recvmmsg`), and prints one line:
//! `sent received seconds cpu_seconds` (seconds: sending, SECONDS; cpu: its own user +
//! system time, getrusage(2), the reading of the last replies included). Probes unanswered
//! after 100 ms of silence are counted lost and the window opens again. Run it alone: a RAW
//! socket also reads every other echo reply on the host (not counted, but its CPU is), as
//! the bee's does; `scripts/bench-swarm` runs its parts one after another.

use std::ffi::c_void;
use std::time::{Duration, Instant};

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}
#[repr(C)]
struct Iovec {
    base: *mut c_void,
    len: usize,
}
#[repr(C)]
struct Msghdr {
    name: *mut c_void,
    namelen: u32,
    iov: *mut Iovec,
    iovlen: usize,
    control: *mut c_void,
    controllen: usize,
    flags: i32,
}
#[repr(C)]
struct Mmsghdr {
    hdr: Msghdr,
    len: u32,
}
#[repr(C)]
struct Pollfd {
    fd: i32,
    events: i16,
    revents: i16,
}
#[repr(C)]
struct Timeval {
    sec: i64,
    usec: i64,
}
#[repr(C)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [i64; 14],
}

extern "C" {
    fn socket(domain: i32, ty: i32, proto: i32) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const c_void, len: u32) -> i32;
    fn sendto(fd: i32, buf: *const c_void, len: usize, flags: i32, to: *const SockaddrIn, tolen: u32) -> isize;
    fn recvmmsg(fd: i32, msgs: *mut Mmsghdr, n: u32, flags: i32, timeout: *mut c_void) -> i32;
    fn poll(fds: *mut Pollfd, n: u64, timeout_ms: i32) -> i32;
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    fn getpid() -> i32;
}

const AF_INET: i32 = 2;
const SOCK_RAW: i32 = 3;
const SOCK_DGRAM: i32 = 2;
const SOCK_NONBLOCK: i32 = 0o4000;
const IPPROTO_ICMP: i32 = 1;
const SOL_SOCKET: i32 = 1;
const SO_RCVBUFFORCE: i32 = 33;
const SO_TIMESTAMPNS: i32 = 35;
const IPPROTO_IP: i32 = 0;
const IP_RECVTTL: i32 = 12;
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const MSG_DONTWAIT: i32 = 0x40;
const POLLIN: i16 = 1;
const BATCH: usize = 64;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Says why in one sentence and exits with 2.
fn refuse(why: String) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "icmp-floor: {why}");
    std::process::exit(2)
}

fn main() {
    // Arguments that are not UTF-8 are refused below, not unwrapped.
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if !(3..=4).contains(&args.len()) {
        refuse("usage: icmp-floor TARGETS_FILE SECONDS [WINDOW]".into());
    }
    let text = std::fs::read_to_string(&args[1]).unwrap_or_else(|e| refuse(format!("cannot read {}: {e}", args[1])));
    let targets: Vec<SockaddrIn> = text
        .split_whitespace()
        .map(|a| {
            let ip: std::net::Ipv4Addr =
                a.parse().unwrap_or_else(|e| refuse(format!("{a} is not an IPv4 address: {e}")));
            SockaddrIn { family: AF_INET as u16, port: 0, addr: u32::from_ne_bytes(ip.octets()), zero: [0; 8] }
        })
        .collect();
    let seconds: f64 = match args[2].parse() {
        Ok(s) if s > 0.0 && s < 1e6 => s,
        _ => refuse(format!("SECONDS must be a number of seconds above 0 and below 1000000, not {:?}", args[2])),
    };
    let window: u64 = match args.get(3).map_or(Ok(2000), |w| w.parse()) {
        Ok(w) if w > 0 => w,
        _ => refuse(format!("WINDOW must be a whole number above 0, not {:?}", args[3])),
    };
    if targets.is_empty() {
        refuse(format!("{} holds no address", args[1]));
    }
    // SAFETY: plain system calls on values owned here, with their sizes.
    let (fd, raw) = unsafe {
        match socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, IPPROTO_ICMP) {
            fd if fd >= 0 => (fd, false),
            _ => (socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_ICMP), true),
        }
    };
    if fd < 0 {
        refuse("no ICMP socket: run as root, or allow ping sockets (net.ipv4.ping_group_range)".into());
    }
    let one: i32 = 1;
    let buf: i32 = 8 << 20;
    let filter: u32 = !1;
    unsafe {
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one as *const i32 as *const c_void, 4);
        setsockopt(fd, IPPROTO_IP, IP_RECVTTL, &one as *const i32 as *const c_void, 4);
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf as *const i32 as *const c_void, 4);
        if raw {
            setsockopt(fd, SOL_RAW, ICMP_FILTER, &filter as *const u32 as *const c_void, 4);
        }
    }
    let ident = (unsafe { getpid() } as u16).to_be_bytes();
    let mut data = vec![0u8; BATCH * 2048];
    let mut controls = vec![0u8; BATCH * 256];
    let mut iovs: Vec<Iovec> = (0..BATCH)
        .map(|i| Iovec { base: unsafe { data.as_mut_ptr().add(i * 2048) } as *mut c_void, len: 2048 })
        .collect();
    let mut hdrs: Vec<Mmsghdr> = (0..BATCH)
        .map(|i| Mmsghdr {
            hdr: Msghdr {
                name: std::ptr::null_mut(),
                namelen: 0,
                iov: unsafe { iovs.as_mut_ptr().add(i) },
                iovlen: 1,
                control: unsafe { controls.as_mut_ptr().add(i * 256) } as *mut c_void,
                controllen: 256,
                flags: 0,
            },
            len: 0,
        })
        .collect();
    let (mut sent, mut received, mut next, mut seq) = (0u64, 0u64, 0usize, 0u16);
    let mut outstanding = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut pkt = [0u8; 64];
    pkt[0] = 8;
    pkt[4..6].copy_from_slice(&ident);
    let mut draining = false;
    loop {
        // After SECONDS nothing more is sent; the replies still coming are read until 100 ms
        // pass without one.
        draining = draining || Instant::now() >= end;
        while !draining && outstanding < window {
            seq = seq.wrapping_add(1);
            pkt[2..4].copy_from_slice(&[0, 0]);
            pkt[6..8].copy_from_slice(&seq.to_be_bytes());
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            let to = &targets[next];
            next = (next + 1) % targets.len();
            let n = unsafe { sendto(fd, pkt.as_ptr() as *const c_void, pkt.len(), 0, to, 16) };
            if n < 0 {
                break;
            }
            sent += 1;
            outstanding += 1;
        }
        for h in hdrs.iter_mut() {
            h.hdr.controllen = 256;
        }
        let n = unsafe { recvmmsg(fd, hdrs.as_mut_ptr(), BATCH as u32, MSG_DONTWAIT, std::ptr::null_mut()) };
        if n > 0 {
            for (i, h) in hdrs.iter().take(n as usize).enumerate() {
                let p = &data[i * 2048..i * 2048 + h.len as usize];
                // RAW sockets hand over the IP header too; ping sockets the ICMP message.
                let icmp =
                    if raw { p.get(usize::from(p.first().unwrap_or(&0x45) & 15) * 4..).unwrap_or(&[]) } else { p };
                if icmp.first() == Some(&0) && (!raw || icmp.get(4..6) == Some(&ident[..])) {
                    received += 1;
                    outstanding = outstanding.saturating_sub(1);
                }
            }
        } else if outstanding >= window || draining {
            let mut pfd = Pollfd { fd, events: POLLIN, revents: 0 };
            if unsafe { poll(&mut pfd, 1, 100) } == 0 {
                if draining {
                    break;
                }
                outstanding = 0;
            }
        }
    }
    let secs = seconds;
    let mut ru: Rusage = unsafe { std::mem::zeroed() };
    unsafe { getrusage(0, &mut ru) };
    let cpu = |t: &Timeval| t.sec as f64 + t.usec as f64 / 1e6;
    use std::io::Write;
    if writeln!(std::io::stdout(), "{sent} {received} {secs:.3} {:.3}", cpu(&ru.utime) + cpu(&ru.stime)).is_err() {
        let _ = writeln!(std::io::stderr(), "icmp-floor: cannot write the result to standard output");
        std::process::exit(1);
    }
}
