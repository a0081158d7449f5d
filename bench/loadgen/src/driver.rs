//! The load itself: one event loop per OS thread (mio, edge-triggered epoll) over that thread's
//! share of the connections ("lanes"). No allocation per request: each socket has one reusable
//! output buffer, written in one syscall per loop turn however many requests are pipelined in it,
//! and one input buffer read in 64 KiB chunks.
//!
//! A lane is one client connection: against Redis one socket, against kv one socket per node, each
//! request going to its key's primary. Closed loop: a lane keeps `--pipeline` requests in flight.
//! Open loop: a per-thread timetable assigns request j to lane j mod lanes at `start + (j + phase) /
//! rate`; a lane sends while it has fewer than `--pipeline` in flight and queues the rest (latency
//! counts from the intended time), dropping what would exceed `--queue-limit`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::cli::Target;
use crate::protocol;
use crate::report::Stats;
use crate::resp::{self, Reply};
use crate::ring::Ring;
use crate::workload::{key_name, KeyChooser, Mix, Op, Rng, KEY_LEN};

const READ_CHUNK: usize = 64 * 1024;
/// A reply longer than this is a protocol error, not a reason to allocate.
const MAX_REPLY: usize = 64 << 20;
/// Reads per readiness event before the socket is revisited next turn (input is bounded anyway:
/// replies to at most `--pipeline` requests).
const MAX_READS_PER_EVENT: usize = 16;
/// How often unanswered requests are checked against `--timeout`.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// The longest a poll waits, so the loop sees the clock at least this often.
const MAX_WAIT: Duration = Duration::from_millis(100);
const TIMER: Token = Token(usize::MAX);

/// What every thread shares: the workload and the clock of the run.
pub struct Shared {
    pub target: Target,
    /// kv: the ring, to route each key to its primary. `None` for Redis.
    pub ring: Option<Ring>,
    pub mix: Mix,
    pub chooser: KeyChooser,
    pub value: Vec<u8>,
    pub pipeline: u32,
    /// kv quorums sent with GET and PUT (0: the node's default).
    pub r: u8,
    pub w: u8,
    pub seed: u64,
    pub start: Instant,
    pub measure_start: Instant,
    pub measure_end: Instant,
    pub timeout: Duration,
    pub queue_limit: usize,
    /// Open loop: wake at most once per this long, sending every request due by then (0: wake for
    /// each request at its intended time). Latency still counts from the intended times.
    pub batch: Duration,
    /// Open loop: requests per second over all lanes of all threads.
    pub rate: Option<f64>,
    pub total_lanes: usize,
}

/// One thread's lanes: (global lane number, its sockets in ring node order).
pub struct Work {
    pub thread: usize,
    pub threads: usize,
    pub lanes: Vec<(usize, Vec<std::net::TcpStream>)>,
}

struct Pending {
    op: Op,
    /// Latency counts from here: the send time (closed loop) or the intended send time (open loop).
    start: Instant,
    sent: Instant,
}

struct Slot {
    generation: u16,
    pending: Option<Pending>,
}

/// Requests sent on a socket and not yet answered.
enum InFlight {
    /// Our protocol answers in completion order: request id = generation << 16 | slot.
    Kv { slots: Vec<Slot>, free: Vec<u16> },
    /// Redis answers in order.
    Redis(VecDeque<Pending>),
}

impl InFlight {
    fn oldest_sent(&self) -> Option<Instant> {
        match self {
            InFlight::Kv { slots, .. } => slots.iter().filter_map(|s| s.pending.as_ref().map(|p| p.sent)).min(),
            InFlight::Redis(queue) => queue.front().map(|p| p.sent),
        }
    }

    fn drain(&mut self) -> usize {
        match self {
            InFlight::Kv { slots, free } => {
                let mut count = 0;
                for (index, slot) in slots.iter_mut().enumerate() {
                    if slot.pending.take().is_some() {
                        free.push(index as u16);
                        count += 1;
                    }
                }
                count
            }
            InFlight::Redis(queue) => {
                let count = queue.len();
                queue.clear();
                count
            }
        }
    }
}

struct Conn {
    sock: TcpStream,
    lane: usize,
    out: Vec<u8>,
    out_pos: usize,
    input: Vec<u8>,
    in_start: usize,
    in_end: usize,
    in_flight: InFlight,
    dirty: bool,
    /// Readable data may be left after MAX_READS_PER_EVENT reads: read again next turn.
    unread: bool,
    open: bool,
}

struct Lane {
    first_conn: usize,
    conns: usize,
    rng: Rng,
    in_flight: u32,
    /// Open loop: intended send times of requests waiting for an in-flight slot.
    queue: VecDeque<Instant>,
    open: bool,
}

enum Outcome<'a> {
    Hit,
    Miss,
    Error(&'a str),
}

struct Driver<'a> {
    s: &'a Shared,
    poll: Poll,
    conns: Vec<Conn>,
    lanes: Vec<Lane>,
    dirty: Vec<usize>,
    unread: Vec<usize>,
    stats: Stats,
    key: [u8; KEY_LEN],
    open_lanes: usize,
}

/// Runs one thread's lanes until `measure_end`, and returns what it measured in the window.
pub fn run(shared: &Shared, work: Work) -> Result<Stats> {
    let mut schedule = shared.rate.map(|rate| Schedule::new(rate, shared, &work));
    let mut driver = Driver::new(shared, work)?;
    let timer = match schedule {
        Some(_) => Some(Timer::new(&driver.poll)?),
        None => None,
    };
    if let Some(pause) = shared.start.checked_duration_since(Instant::now()) {
        std::thread::sleep(pause);
    }
    let mut now = Instant::now();
    if schedule.is_none() {
        for lane in 0..driver.lanes.len() {
            driver.refill(lane, now);
        }
        driver.flush_dirty();
    }
    let mut events = Events::with_capacity(1024);
    let mut next_check = now + CHECK_EVERY;
    let mut timer = timer;
    while now < shared.measure_end && driver.open_lanes > 0 {
        let mut wait = (shared.measure_end - now).min(MAX_WAIT).min(next_check.saturating_duration_since(now));
        if let (Some(schedule), Some(timer)) = (&schedule, &mut timer) {
            let wake_at = schedule.wake_at(shared.batch);
            let due = wake_at.saturating_duration_since(now);
            if due.is_zero() {
                wait = Duration::ZERO;
            } else if due < wait {
                timer.arm(wake_at, due)?;
            }
        }
        if !driver.unread.is_empty() {
            wait = Duration::ZERO;
        }
        match driver.poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err).context("epoll failed"),
        }
        now = Instant::now();
        for unread in std::mem::take(&mut driver.unread) {
            driver.conns[unread].unread = false;
            driver.readable(unread, now);
        }
        for event in events.iter() {
            let token = event.token();
            if token == TIMER {
                if let Some(timer) = &mut timer {
                    timer.fired();
                }
                continue;
            }
            let c = token.0;
            if !driver.conns[c].open {
                continue;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                driver.readable(c, now);
            }
            if driver.conns[c].open && (event.is_writable() || driver.conns[c].dirty) {
                driver.flush(c);
            }
        }
        if let Some(schedule) = &mut schedule {
            now = Instant::now();
            schedule.release(&mut driver, now);
        }
        driver.flush_dirty();
        if now >= next_check {
            driver.check_timeouts(now);
            next_check = now + CHECK_EVERY;
        }
    }
    Ok(driver.stats)
}

impl<'a> Driver<'a> {
    fn new(s: &'a Shared, work: Work) -> Result<Driver<'a>> {
        let poll = Poll::new().context("cannot create an epoll instance")?;
        let mut conns = Vec::new();
        let mut lanes = Vec::new();
        for (lane_index, (global, sockets)) in work.lanes.into_iter().enumerate() {
            lanes.push(Lane {
                first_conn: conns.len(),
                conns: sockets.len(),
                rng: Rng::new(s.seed, global as u64),
                in_flight: 0,
                queue: VecDeque::new(),
                open: true,
            });
            for socket in sockets {
                socket.set_nonblocking(true)?;
                let mut sock = TcpStream::from_std(socket);
                let token = Token(conns.len());
                poll.registry().register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
                let in_flight = match s.target {
                    Target::Kv => InFlight::Kv {
                        slots: (0..s.pipeline).map(|_| Slot { generation: 0, pending: None }).collect(),
                        free: (0..s.pipeline as u16).rev().collect(),
                    },
                    Target::Redis => InFlight::Redis(VecDeque::with_capacity(s.pipeline as usize)),
                };
                conns.push(Conn {
                    sock,
                    lane: lane_index,
                    out: Vec::with_capacity(16 * 1024),
                    out_pos: 0,
                    input: vec![0; READ_CHUNK],
                    in_start: 0,
                    in_end: 0,
                    in_flight,
                    dirty: false,
                    unread: false,
                    open: true,
                });
            }
        }
        let open_lanes = lanes.len();
        Ok(Driver {
            s,
            poll,
            conns,
            lanes,
            dirty: Vec::new(),
            unread: Vec::new(),
            stats: Stats::new(),
            key: [0; KEY_LEN],
            open_lanes,
        })
    }

    fn in_window(&self, at: Instant) -> bool {
        at >= self.s.measure_start && at < self.s.measure_end
    }

    /// Sends what `lane` may send now: closed loop, up to `--pipeline` new requests; open loop,
    /// queued requests while fewer than `--pipeline` are in flight.
    fn refill(&mut self, l: usize, now: Instant) {
        if now >= self.s.measure_end {
            return;
        }
        let open_loop = self.s.rate.is_some();
        while self.lanes[l].open && self.lanes[l].in_flight < self.s.pipeline {
            let start = if open_loop {
                match self.lanes[l].queue.pop_front() {
                    Some(intended) => intended,
                    None => break,
                }
            } else {
                now
            };
            self.issue(l, start, now);
        }
    }

    fn issue(&mut self, l: usize, start: Instant, now: Instant) {
        let s = self.s;
        let lane = &mut self.lanes[l];
        let op = s.mix.choose(lane.rng.next_f64());
        key_name(s.chooser.index(&mut lane.rng), &mut self.key);
        let node = s.ring.as_ref().map_or(0, |ring| ring.primary(&self.key));
        lane.in_flight += 1;
        let c = lane.first_conn + node;
        let conn = &mut self.conns[c];
        let pending = Pending { op, start, sent: now };
        match &mut conn.in_flight {
            InFlight::Kv { slots, free } => {
                let slot = free.pop().expect("a free slot: a lane never has more than --pipeline in flight");
                let entry = &mut slots[slot as usize];
                entry.generation = entry.generation.wrapping_add(1);
                entry.pending = Some(pending);
                let id = (entry.generation as u32) << 16 | slot as u32;
                match op {
                    Op::Get => protocol::encode_get(&mut conn.out, id, s.r, &self.key),
                    Op::Put => protocol::encode_put(&mut conn.out, id, s.w, 0, &self.key, &s.value),
                }
            }
            InFlight::Redis(queue) => {
                queue.push_back(pending);
                match op {
                    Op::Get => resp::encode_get(&mut conn.out, &self.key),
                    Op::Put => resp::encode_set(&mut conn.out, &self.key, &s.value),
                }
            }
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
    }

    /// Reads what `c` has (in 64 KiB chunks) and handles every complete reply in it.
    fn readable(&mut self, c: usize, now: Instant) {
        for _ in 0..MAX_READS_PER_EVENT {
            let conn = &mut self.conns[c];
            if !conn.open {
                return;
            }
            let space = conn.input.len() - conn.in_end;
            match conn.sock.read(&mut conn.input[conn.in_end..]) {
                Ok(0) => return self.lose(c, "connection_closed", now),
                Ok(n) => {
                    conn.in_end += n;
                    self.parse(c, now);
                    if n < space {
                        return; // a short read drained the socket; new data brings a new event
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.lose(c, "connection_error", now),
            }
        }
        if self.conns[c].open && !self.conns[c].unread {
            self.conns[c].unread = true;
            self.unread.push(c);
        }
    }

    fn parse(&mut self, c: usize, now: Instant) {
        let mut input = std::mem::take(&mut self.conns[c].input);
        let (mut start, end) = (self.conns[c].in_start, self.conns[c].in_end);
        let mut failed = false;
        while self.conns[c].open {
            let buf = &input[start..end];
            let parsed = match self.s.target {
                Target::Kv => match protocol::parse_frame(buf) {
                    Ok(Some(frame)) => {
                        start += frame.size;
                        self.reply_kv(c, frame.request_id, frame.code, now)
                    }
                    Ok(None) => break,
                    Err(_) => false,
                },
                Target::Redis => match resp::parse_reply(buf) {
                    Ok(Some((reply, used))) => {
                        start += used;
                        self.reply_redis(c, reply, now)
                    }
                    Ok(None) => break,
                    Err(_) => false,
                },
            };
            if !parsed {
                failed = true;
                break;
            }
        }
        if failed {
            self.conns[c].input = input;
            return self.lose(c, "protocol_error", now);
        }
        // Keep the unparsed tail, with room after it for the whole of the next reply.
        let (mut start, mut end) = if start == end { (0, 0) } else { (start, end) };
        if start < end {
            let size = match self.s.target {
                Target::Kv => protocol::frame_size(&input[start..end]),
                Target::Redis => resp::needed(&input[start..end]),
            };
            let wanted = size.unwrap_or(end - start + 1);
            if wanted > MAX_REPLY {
                self.conns[c].input = input;
                return self.lose(c, "protocol_error", now);
            }
            if end == input.len() || wanted > input.len() - start {
                input.copy_within(start..end, 0);
                (start, end) = (0, end - start);
                if wanted > input.len() {
                    input.resize(wanted.max(input.len() * 2), 0);
                }
            }
        }
        let conn = &mut self.conns[c];
        conn.in_start = start;
        conn.in_end = end;
        conn.input = input;
    }

    /// Handles a kv reply; false if it answers nothing sent (a protocol error).
    fn reply_kv(&mut self, c: usize, id: u32, code: u8, now: Instant) -> bool {
        let InFlight::Kv { slots, free } = &mut self.conns[c].in_flight else {
            return false;
        };
        let slot = (id & 0xffff) as usize;
        let Some(entry) = slots.get_mut(slot) else {
            return false;
        };
        if entry.generation != (id >> 16) as u16 {
            return false;
        }
        let Some(pending) = entry.pending.take() else {
            return false;
        };
        free.push(slot as u16);
        let outcome = match code {
            protocol::OK => Outcome::Hit,
            protocol::NOT_FOUND => Outcome::Miss,
            other => Outcome::Error(protocol::status_name(other)),
        };
        self.finish(c, pending, outcome, now);
        true
    }

    fn reply_redis(&mut self, c: usize, reply: Reply<'_>, now: Instant) -> bool {
        let InFlight::Redis(queue) = &mut self.conns[c].in_flight else {
            return false;
        };
        let Some(pending) = queue.pop_front() else {
            return false;
        };
        match reply {
            Reply::Ok => self.finish(c, pending, Outcome::Hit, now),
            Reply::Nil => self.finish(c, pending, Outcome::Miss, now),
            Reply::Error(line) => {
                let kind = resp::error_kind(line);
                self.finish(c, pending, Outcome::Error(&kind), now);
            }
        }
        true
    }

    fn finish(&mut self, c: usize, pending: Pending, outcome: Outcome<'_>, now: Instant) {
        let l = self.conns[c].lane;
        self.lanes[l].in_flight -= 1;
        if self.in_window(now) {
            let op = pending.op as usize;
            match outcome {
                Outcome::Hit | Outcome::Miss => {
                    self.stats.ops[op] += 1;
                    if matches!(outcome, Outcome::Miss) && pending.op == Op::Get {
                        self.stats.get_misses += 1;
                    }
                    let nanos = now.saturating_duration_since(pending.start).as_nanos() as u64;
                    self.stats.latency[op].saturating_record(nanos.max(1));
                }
                Outcome::Error(kind) => self.stats.error(kind, 1),
            }
        }
        self.refill(l, now);
    }

    /// Writes `c`'s pending output, as far as the socket takes it.
    fn flush(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        conn.dirty = false;
        while conn.out_pos < conn.out.len() {
            match conn.sock.write(&conn.out[conn.out_pos..]) {
                Ok(0) => return self.lose(c, "connection_closed", Instant::now()),
                Ok(n) => conn.out_pos += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return, // a writable event follows
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.lose(c, "connection_error", Instant::now()),
            }
        }
        conn.out.clear();
        conn.out_pos = 0;
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &c in &dirty {
            if self.conns[c].dirty && self.conns[c].open {
                self.flush(c);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn check_timeouts(&mut self, now: Instant) {
        for c in 0..self.conns.len() {
            let conn = &self.conns[c];
            if conn.open && conn.in_flight.oldest_sent().is_some_and(|sent| now - sent > self.s.timeout) {
                self.lose(c, "timeout", now);
            }
        }
    }

    /// Closes `c`'s lane: its unanswered requests count as `kind` errors, its queue as dropped.
    fn lose(&mut self, c: usize, kind: &str, now: Instant) {
        let l = self.conns[c].lane;
        if !self.lanes[l].open {
            return;
        }
        self.stats.connections_lost += 1;
        let in_window = self.in_window(now);
        let lane = &mut self.lanes[l];
        lane.open = false;
        lane.in_flight = 0;
        let queued = lane.queue.len() as u64;
        lane.queue.clear();
        self.open_lanes -= 1;
        let (first, count) = (lane.first_conn, lane.conns);
        let mut lost = 0;
        for conn in &mut self.conns[first..first + count] {
            conn.open = false;
            lost += conn.in_flight.drain() as u64;
            let _ = self.poll.registry().deregister(&mut conn.sock);
            let _ = conn.sock.shutdown(std::net::Shutdown::Both);
        }
        if in_window {
            self.stats.error(kind, lost);
            self.stats.dropped += queued;
        }
    }
}

/// The open loop's timetable for one thread.
struct Schedule {
    next: u64,
    next_due: Instant,
    /// Seconds between this thread's requests, and the offset of its first, as a fraction.
    interval: f64,
    phase: f64,
    start: Instant,
    lanes: usize,
}

impl Schedule {
    fn new(rate: f64, s: &Shared, work: &Work) -> Schedule {
        let lanes = work.lanes.len().max(1);
        let thread_rate = rate * lanes as f64 / s.total_lanes as f64;
        let interval = 1.0 / thread_rate;
        let phase = work.thread as f64 / work.threads as f64;
        let mut schedule = Schedule { next: 0, next_due: s.start, interval, phase, start: s.start, lanes };
        schedule.next_due = schedule.due(0);
        schedule
    }

    /// When to wake for the next request: its intended time, or with `batch`, the end of the
    /// batch-long slot of the timetable it falls in, so one wake-up sends a slot's requests together.
    fn wake_at(&self, batch: Duration) -> Instant {
        if batch.is_zero() {
            return self.next_due;
        }
        let since = (self.next_due - self.start).as_nanos();
        let slot = batch.as_nanos();
        let rounded = since.div_ceil(slot) * slot;
        self.start + Duration::from_nanos(rounded as u64)
    }

    fn due(&self, j: u64) -> Instant {
        self.start + Duration::from_secs_f64((j as f64 + self.phase) * self.interval)
    }

    /// Hands every request due by `now` to its lane (or drops it), and lets the lanes send.
    fn release(&mut self, driver: &mut Driver<'_>, now: Instant) {
        let s = driver.s;
        while self.next_due <= now && self.next_due < s.measure_end {
            let l = (self.next % self.lanes as u64) as usize;
            let in_window = driver.in_window(self.next_due);
            if in_window {
                driver.stats.scheduled += 1;
                let lag = now.saturating_duration_since(self.next_due).as_nanos() as u64;
                driver.stats.schedule_lag.saturating_record(lag.max(1));
            }
            let lane = &mut driver.lanes[l];
            if lane.open && lane.queue.len() < s.queue_limit {
                lane.queue.push_back(self.next_due);
                driver.stats.max_queue = driver.stats.max_queue.max(lane.queue.len() as u64);
                driver.refill(l, now);
            } else if in_window {
                driver.stats.dropped += 1;
            }
            self.next += 1;
            self.next_due = self.due(self.next);
        }
    }
}

/// A timerfd in the poll set, for waking at a request's intended time with microsecond precision
/// (epoll's own timeout has millisecond granularity).
struct Timer {
    fd: OwnedFd,
    armed_for: Option<Instant>,
}

impl Timer {
    fn new(poll: &Poll) -> Result<Timer> {
        // SAFETY: plain syscalls; the fd is owned from here on.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot create a timerfd");
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        poll.registry().register(&mut SourceFd(&fd.as_raw_fd()), TIMER, Interest::READABLE)?;
        // Wake on time: the default 50 us timer slack would add to every open-loop latency.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        Ok(Timer { fd, armed_for: None })
    }

    fn arm(&mut self, at: Instant, after: Duration) -> Result<()> {
        if self.armed_for == Some(at) {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos().max(1) as libc::c_long,
            },
        };
        // SAFETY: the fd is a timerfd we own; the spec outlives the call.
        let rc = unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot arm the timerfd");
        }
        self.armed_for = Some(at);
        Ok(())
    }

    /// The timer went off. Its expiration count is not read: re-arming resets it, and the
    /// edge-triggered poll reports every expiration anyway, so the read would be a wasted syscall.
    fn fired(&mut self) {
        self.armed_for = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_timetable_spreads_requests_evenly_and_batches_on_a_grid() {
        let start = Instant::now();
        let mut schedule = Schedule { next: 0, next_due: start, interval: 0.001, phase: 0.5, start, lanes: 3 };
        schedule.next_due = schedule.due(0);
        assert_eq!(schedule.due(0) - start, Duration::from_micros(500));
        assert_eq!(schedule.due(10) - start, Duration::from_micros(10_500));
        assert_eq!(schedule.wake_at(Duration::ZERO), schedule.next_due);
        assert_eq!(schedule.wake_at(Duration::from_micros(300)) - start, Duration::from_micros(600));
        assert_eq!(schedule.wake_at(Duration::from_micros(500)) - start, Duration::from_micros(500));
    }

    /// A stand-in server on 127.0.0.1 for `connections` connections: Redis answers `+OK` to each
    /// request; kv answers OK to each frame, every batch in reverse order (completion order).
    fn fake_server(target: Target, connections: usize) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let mut serving = Vec::new();
            for _ in 0..connections {
                let (mut stream, _) = listener.accept().unwrap();
                serving.push(std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut pending = Vec::new();
                    loop {
                        let n = match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        let mut out = Vec::new();
                        match target {
                            Target::Redis => {
                                while let Some(end) = request_end(&pending) {
                                    pending.drain(..end);
                                    out.extend_from_slice(b"+OK\r\n");
                                }
                            }
                            Target::Kv => {
                                let mut replies = Vec::new();
                                while let Ok(Some(frame)) = protocol::parse_frame(&pending) {
                                    let (id, size) = (frame.request_id, frame.size);
                                    pending.drain(..size);
                                    replies.push(id);
                                }
                                for id in replies.into_iter().rev() {
                                    out.extend_from_slice(&5u32.to_be_bytes());
                                    out.extend_from_slice(&id.to_be_bytes());
                                    out.push(protocol::NOT_FOUND);
                                }
                            }
                        }
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                }));
            }
            for thread in serving {
                let _ = thread.join();
            }
        });
        (address, handle)
    }

    /// The end of the first whole RESP request (an array of bulk strings) in `buf`.
    fn request_end(buf: &[u8]) -> Option<usize> {
        let line = |from: usize| buf[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p);
        let end = line(0)?;
        let count: usize = std::str::from_utf8(&buf[1..end]).ok()?.parse().ok()?;
        let mut at = end + 2;
        for _ in 0..count {
            let end = line(at)?;
            let length: usize = std::str::from_utf8(&buf[at + 1..end]).ok()?.parse().ok()?;
            at = end + 2 + length + 2;
            if at > buf.len() {
                return None;
            }
        }
        Some(at)
    }

    fn run_against(target: Target, rate: Option<f64>) -> Stats {
        let lanes = 2;
        let (address, server) = fake_server(target, lanes);
        let sockets: Vec<_> =
            (0..lanes).map(|lane| (lane, vec![std::net::TcpStream::connect(&address).unwrap()])).collect();
        let start = Instant::now();
        let shared = Shared {
            target,
            ring: None,
            mix: Mix::parse("get=50,put=50").unwrap(),
            chooser: KeyChooser::uniform(100).unwrap(),
            value: crate::workload::make_value(10),
            pipeline: 4,
            r: 0,
            w: 0,
            seed: 1,
            start,
            measure_start: start + Duration::from_millis(50),
            measure_end: start + Duration::from_millis(300),
            timeout: Duration::from_secs(2),
            queue_limit: 100,
            batch: Duration::ZERO,
            rate,
            total_lanes: lanes,
        };
        let stats = run(&shared, Work { thread: 0, threads: 1, lanes: sockets }).unwrap();
        server.join().unwrap();
        stats
    }

    #[test]
    fn closed_loop_against_a_fake_redis() {
        let stats = run_against(Target::Redis, None);
        assert!(stats.total_ops() > 100, "{}", stats.total_ops());
        assert!(stats.ops[0] > 0 && stats.ops[1] > 0);
        assert_eq!((stats.total_errors(), stats.connections_lost), (0, 0));
        assert_eq!(stats.latency[0].len(), stats.ops[0]);
    }

    #[test]
    fn closed_loop_against_a_fake_node_matches_replies_by_id() {
        let stats = run_against(Target::Kv, None);
        assert!(stats.total_ops() > 100, "{}", stats.total_ops());
        assert_eq!(stats.get_misses, stats.ops[0]);
        assert_eq!((stats.total_errors(), stats.connections_lost), (0, 0));
    }

    #[test]
    fn open_loop_keeps_to_its_rate() {
        let stats = run_against(Target::Kv, Some(2_000.0));
        // 250 ms of a 2,000/s timetable: 500 requests due in the window, all answered.
        assert!((495..=505).contains(&stats.scheduled), "{}", stats.scheduled);
        assert!(stats.total_ops().abs_diff(stats.scheduled) <= 5, "{} vs {}", stats.total_ops(), stats.scheduled);
        assert_eq!(stats.dropped, 0);
        assert!(!stats.schedule_lag.is_empty());
    }
}
