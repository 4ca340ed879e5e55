//! A userspace wire: the kernel here has no netem, so the lab emulates links itself.
//!
//! A [`Link`] bridges two interfaces of one namespace at layer 2 with AF_PACKET raw
//! sockets: every frame that arrives on one end leaves by the other, after what the
//! direction's [`Shape`] does to it:
//!
//! 1. one draw from the direction's seeded ChaCha8 RNG decides random loss (exactly one
//!    draw per frame, whatever happens next, so losses depend only on the seed and the
//!    order of frames);
//! 2. a tail-drop queue: a frame that would make the bytes waiting for the serializer
//!    exceed `queue_bytes` is dropped (an empty queue takes any frame);
//! 3. serialization at `rate_bps`, FIFO: the frame leaves the queue after every frame
//!    before it, and takes `len × 8 / rate` seconds;
//! 4. the frame is lost now if step 1 said so (it still used the wire's time);
//! 5. otherwise it is delivered `delay` after its serialization ends.
//!
//! One thread per link serves both directions. It sleeps in `ppoll` until a socket is
//! readable or the earliest frame is due (timer slack 1 µs), so frames leave when due
//! rather than on a sleep's granularity: good to tens of microseconds, against 120 µs
//! per full frame at 100 Mbit/s. Frames never overtake each other in one direction.
//!
//! The two ends should have offloads off (see `topology`): a kernel sender with TSO/GSO
//! hands a veth 64 KiB super-frames, which would arrive here whole and could not be sent
//! back out as one Ethernet frame, and with tx checksum offload the checksums in the
//! frames are incomplete (the receiving stack, seeing a frame written by a packet
//! socket, would check them and drop the segment).

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::netns::{LabError, Ns, NsThread, lock};
use crate::sys::{self, PacketOptions, PacketSocket};

/// Frames held by one direction at most (queued plus in flight), whatever the shape
/// says: bounds memory when someone asks for a long delay at a high rate.
const MAX_FRAMES_IN_FLIGHT: usize = 100_000;
/// Frames read from one socket per wake-up before the other gets its turn.
const READ_BATCH: usize = 256;
/// The longest the thread sleeps: how soon it notices a stop request.
const IDLE_WAKE: Duration = Duration::from_millis(20);
/// Receive buffer of each end: a whole congestion window arrives at once.
const RECEIVE_BUFFER: usize = 8 << 20;

/// What one direction of a link does to frames.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// Propagation delay added after serialization.
    pub delay: Duration,
    /// Serialization rate in bits per second of Ethernet frame (header included, no
    /// preamble or FCS); 0 means unlimited (and no queue).
    pub rate_bps: u64,
    /// Tail-drop limit on bytes waiting for the serializer.
    pub queue_bytes: usize,
    /// Probability in [0, 1] that a frame is lost.
    pub loss: f64,
}

impl Shape {
    /// No delay, no rate limit, no loss.
    pub const IDEAL: Shape = Shape {
        delay: Duration::ZERO,
        rate_bps: 0,
        queue_bytes: usize::MAX,
        loss: 0.0,
    };

    /// How long a frame of `len` bytes occupies the wire.
    pub fn serialization(&self, len: usize) -> Duration {
        if self.rate_bps == 0 {
            return Duration::ZERO;
        }
        let nanos = (len as u128 * 8 * 1_000_000_000).div_ceil(u128::from(self.rate_bps));
        Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
    }

    fn sanitized(mut self) -> Shape {
        self.loss = if self.loss.is_nan() {
            0.0
        } else {
            self.loss.clamp(0.0, 1.0)
        };
        self
    }
}

impl Default for Shape {
    fn default() -> Shape {
        Shape::IDEAL
    }
}

/// A direction of a link: `Forward` carries frames arriving on the first end (as given
/// to [`Link::start`]) out of the second; `Reverse` the other way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Forward,
    Reverse,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Forward, Direction::Reverse];

    fn index(self) -> usize {
        match self {
            Direction::Forward => 0,
            Direction::Reverse => 1,
        }
    }
}

/// A link's initial shapes and its seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    pub forward: Shape,
    pub reverse: Shape,
    /// Seeds both directions' loss RNGs (as two streams of one ChaCha8 key).
    pub seed: u64,
}

impl LinkConfig {
    pub fn symmetric(shape: Shape, seed: u64) -> LinkConfig {
        LinkConfig {
            forward: shape,
            reverse: shape,
            seed,
        }
    }
}

/// What happened to the frames of one direction so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames read from the ingress end (our own transmissions excluded).
    pub received: u64,
    /// Frames put on the egress end.
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    /// Frames lost to the random loss.
    pub dropped_loss: u64,
    /// Frames refused by the full tail-drop queue (or the in-flight bound).
    pub dropped_queue: u64,
    /// Frames too large for the buffer (a sign that offloads are on).
    pub dropped_oversize: u64,
    /// Frames the kernel dropped because the emulator did not read them in time.
    pub dropped_socket: u64,
    /// Frames the egress end refused.
    pub send_errors: u64,
}

#[derive(Debug, Default)]
struct AtomicCounters {
    received: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_socket: AtomicU64,
    send_errors: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl AtomicCounters {
    fn snapshot(&self) -> LinkCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkCounters {
            received: get(&self.received),
            forwarded: get(&self.forwarded),
            forwarded_bytes: get(&self.forwarded_bytes),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            dropped_oversize: get(&self.dropped_oversize),
            dropped_socket: get(&self.dropped_socket),
            send_errors: get(&self.send_errors),
        }
    }
}

/// A change a handle asked for at a later time.
#[derive(Clone, Copy, Debug)]
enum Change {
    Loss(f64),
}

#[derive(Debug)]
struct Control {
    shapes: [Shape; 2],
    scheduled: Vec<(Instant, Direction, Change)>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    control: Mutex<Control>,
    /// Bumped on every change of `control`, so the thread locks only when needed.
    version: AtomicU64,
    counters: [AtomicCounters; 2],
}

impl Shared {
    fn modify(&self, f: impl FnOnce(&mut Control)) {
        let mut control = lock(&self.control);
        f(&mut control);
        self.version.fetch_add(1, Ordering::Release);
    }
}

/// Changes a running link and reads its counters; cheap to clone, usable from any
/// thread. Changes take effect for frames arriving after them.
#[derive(Clone, Debug)]
pub struct LinkHandle {
    shared: Arc<Shared>,
}

impl LinkHandle {
    /// `first<->second`, as given to [`Link::start`].
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn shape(&self, direction: Direction) -> Shape {
        lock(&self.shared.control).shapes[direction.index()]
    }

    pub fn set_shape(&self, direction: Direction, shape: Shape) {
        self.shared
            .modify(|c| c.shapes[direction.index()] = shape.sanitized());
    }

    /// Changes one direction's shape in place.
    pub fn update(&self, direction: Direction, f: impl FnOnce(&mut Shape)) {
        self.shared.modify(|c| {
            let shape = &mut c.shapes[direction.index()];
            f(shape);
            *shape = shape.sanitized();
        });
    }

    pub fn set_loss(&self, direction: Direction, loss: f64) {
        self.update(direction, |s| s.loss = loss);
    }

    pub fn set_delay(&self, direction: Direction, delay: Duration) {
        self.update(direction, |s| s.delay = delay);
    }

    pub fn set_rate(&self, direction: Direction, rate_bps: u64) {
        self.update(direction, |s| s.rate_bps = rate_bps);
    }

    /// Sets the loss now and puts the current loss back after `duration` (the link's
    /// thread does it, on time, whether or not anyone is still holding the handle).
    pub fn set_loss_for(&self, direction: Direction, loss: f64, duration: Duration) {
        let at = Instant::now() + duration;
        self.shared.modify(|c| {
            let shape = &mut c.shapes[direction.index()];
            c.scheduled.push((at, direction, Change::Loss(shape.loss)));
            shape.loss = loss;
            *shape = shape.sanitized();
        });
    }

    pub fn counters(&self, direction: Direction) -> LinkCounters {
        self.shared.counters[direction.index()].snapshot()
    }
}

/// A running emulated link. Dropping it stops its thread (within 20 ms).
#[derive(Debug)]
pub struct Link {
    handle: LinkHandle,
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<Result<(), LabError>>>,
}

impl Link {
    /// Bridges interfaces `first` and `second` of namespace `ns` (both up, offloads
    /// off). Returns once both sockets are bound: frames arriving after that are
    /// carried.
    pub fn start(ns: &Ns, first: &str, second: &str, config: LinkConfig) -> Result<Link, LabError> {
        let shared = Arc::new(Shared {
            name: format!("{first}<->{second}"),
            control: Mutex::new(Control {
                shapes: [config.forward.sanitized(), config.reverse.sanitized()],
                scheduled: Vec::new(),
            }),
            version: AtomicU64::new(0),
            counters: Default::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let ends = [first.to_owned(), second.to_owned()];
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            ns.spawn_thread(&format!("wire {first}"), move || {
                let sockets = match open_ends(&ends) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                carry(&sockets, &shared, &stop, config.seed)
            })?
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Link {
                handle: LinkHandle { shared },
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                Err(LabError::Invalid(format!(
                    "link {first}<->{second}: thread not ready within 5 s"
                )))
            }
        }
    }

    pub fn handle(&self) -> &LinkHandle {
        &self.handle
    }

    /// Stops the thread and reports how it ended.
    pub fn stop(mut self) -> Result<(), LabError> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Result<(), LabError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread.join()?,
            None => Ok(()),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Err(e) = self.stop_thread() {
            tracing::warn!("link {}: {e}", self.handle.name());
        }
    }
}

fn open_ends(ends: &[String; 2]) -> Result<[PacketSocket; 2], LabError> {
    let options = PacketOptions {
        // Our own transmissions on an end would otherwise come back to us as
        // PACKET_OUTGOING frames and be carried back (a loop).
        ignore_outgoing: true,
        timestamps: false,
        receive_buffer: RECEIVE_BUFFER,
    };
    let open = |name: &String| {
        PacketSocket::open(name, &options).map_err(|e| LabError::io(format!("packet socket on {name}"), e))
    };
    Ok([open(&ends[0])?, open(&ends[1])?])
}

/// What becomes of one frame (see the module docs for the order of the steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Leaves the egress end at this time (since the link's epoch).
    Deliver(Duration),
    Lost,
    QueueFull,
}

/// One direction's state: the serializer and the loss RNG. Time is a `Duration` since
/// the link's epoch, so the model is a pure function of its inputs (and testable).
#[derive(Debug)]
pub(crate) struct DirectionModel {
    rng: ChaCha8Rng,
    /// When the serializer finishes the last admitted frame.
    busy_until: Duration,
}

impl DirectionModel {
    pub(crate) fn new(seed: u64, direction: Direction) -> DirectionModel {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(direction.index() as u64);
        DirectionModel {
            rng,
            busy_until: Duration::ZERO,
        }
    }

    pub(crate) fn admit(&mut self, shape: &Shape, now: Duration, len: usize) -> Verdict {
        // 53 random bits as a uniform in [0, 1).
        let draw = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let lost = draw < shape.loss;
        let leaves = if shape.rate_bps == 0 {
            now
        } else {
            let start = self.busy_until.max(now);
            let backlog = start - now;
            let backlog_bytes = backlog.as_nanos() * u128::from(shape.rate_bps) / 8_000_000_000;
            if !backlog.is_zero() && backlog_bytes + len as u128 > shape.queue_bytes as u128 {
                return Verdict::QueueFull;
            }
            self.busy_until = start + shape.serialization(len);
            self.busy_until
        };
        if lost {
            Verdict::Lost
        } else {
            Verdict::Deliver(leaves + shape.delay)
        }
    }
}

struct Frame {
    due: Duration,
    data: Vec<u8>,
}

/// The link's thread: read, judge, hold, release when due.
fn carry(sockets: &[PacketSocket; 2], shared: &Shared, stop: &AtomicBool, seed: u64) -> Result<(), LabError> {
    sys::tight_timer_slack();
    let epoch = Instant::now();
    let mut models = Direction::BOTH.map(|d| DirectionModel::new(seed, d));
    let mut pending: [VecDeque<Frame>; 2] = Default::default();
    // Buffers of delivered frames are reused: no allocation per frame once warm.
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut scratch = vec![0u8; 64 << 10];
    let mut seen_version = u64::MAX;
    let mut shapes = [Shape::IDEAL; 2];
    let mut next_change: Option<Instant> = None;
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let version = shared.version.load(Ordering::Acquire);
        if version != seen_version {
            let control = lock(&shared.control);
            shapes = control.shapes;
            next_change = control.scheduled.iter().map(|s| s.0).min();
            seen_version = version;
        }
        if next_change.is_some_and(|at| at <= Instant::now()) {
            let now = Instant::now();
            shared.modify(|c| {
                let (due, later): (Vec<_>, Vec<_>) = c.scheduled.iter().partition(|s| s.0 <= now);
                c.scheduled = later;
                for (_, direction, change) in due {
                    let shape = &mut c.shapes[direction.index()];
                    match change {
                        Change::Loss(loss) => shape.loss = loss,
                    }
                }
            });
            continue;
        }

        let now = epoch.elapsed();
        for (d, queue) in pending.iter_mut().enumerate() {
            let counters = &shared.counters[d];
            while queue.front().is_some_and(|f| f.due <= now) {
                let frame = queue.pop_front().expect("front checked");
                match sockets[1 - d].send(&frame.data) {
                    Ok(()) => {
                        bump(&counters.forwarded, 1);
                        bump(&counters.forwarded_bytes, frame.data.len() as u64);
                    }
                    Err(_) => bump(&counters.send_errors, 1),
                }
                if pool.len() < 4096 {
                    pool.push(frame.data);
                }
            }
        }

        let mut timeout = IDLE_WAKE;
        for queue in &pending {
            if let Some(front) = queue.front() {
                timeout = timeout.min(front.due.saturating_sub(now));
            }
        }
        if let Some(at) = next_change {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        let mut fds = [
            sys::pollfd(sockets[0].as_raw_fd()),
            sys::pollfd(sockets[1].as_raw_fd()),
        ];
        sys::poll(&mut fds, timeout).map_err(|e| LabError::io("link poll", e))?;

        let now = epoch.elapsed();
        for d in 0..2 {
            if fds[d].revents == 0 {
                continue;
            }
            let counters = &shared.counters[d];
            for _ in 0..READ_BATCH {
                let received = match sockets[d].recv(&mut scratch) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => return Err(LabError::io(format!("link {}: receive", shared.name), e)),
                };
                if received.pkttype == sys::PACKET_OUTGOING {
                    continue;
                }
                bump(&counters.received, 1);
                if received.len > scratch.len() {
                    bump(&counters.dropped_oversize, 1);
                    continue;
                }
                if pending[d].len() >= MAX_FRAMES_IN_FLIGHT {
                    bump(&counters.dropped_queue, 1);
                    continue;
                }
                match models[d].admit(&shapes[d], now, received.len) {
                    Verdict::Deliver(due) => {
                        let mut data = pool.pop().unwrap_or_default();
                        data.clear();
                        data.extend_from_slice(&scratch[..received.len]);
                        pending[d].push_back(Frame { due, data });
                    }
                    Verdict::Lost => bump(&counters.dropped_loss, 1),
                    Verdict::QueueFull => bump(&counters.dropped_queue, 1),
                }
            }
        }

        if last_stats.elapsed() >= Duration::from_millis(100) {
            last_stats = Instant::now();
            for (socket, counters) in sockets.iter().zip(&shared.counters) {
                if let Ok(drops) = socket.take_drops() {
                    bump(&counters.dropped_socket, drops);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn shape(rate_bps: u64, queue_bytes: usize, loss: f64) -> Shape {
        Shape {
            delay: 5 * MS,
            rate_bps,
            queue_bytes,
            loss,
        }
    }

    #[test]
    fn serialization_time_is_frame_bits_over_rate() {
        let s = shape(100_000_000, 1 << 20, 0.0);
        assert_eq!(s.serialization(1500), Duration::from_micros(120));
        assert_eq!(Shape::IDEAL.serialization(1500), Duration::ZERO);
    }

    #[test]
    fn frames_queue_behind_each_other_then_get_the_delay() {
        let s = shape(100_000_000, 1 << 20, 0.0);
        let mut m = DirectionModel::new(1, Direction::Forward);
        let t0 = Duration::from_secs(1);
        assert_eq!(
            m.admit(&s, t0, 1500),
            Verdict::Deliver(t0 + Duration::from_micros(120) + 5 * MS)
        );
        assert_eq!(
            m.admit(&s, t0, 1500),
            Verdict::Deliver(t0 + Duration::from_micros(240) + 5 * MS)
        );
        // After the serializer went idle, a frame starts at once.
        let later = t0 + 10 * MS;
        assert_eq!(
            m.admit(&s, later, 1500),
            Verdict::Deliver(later + Duration::from_micros(120) + 5 * MS)
        );
    }

    #[test]
    fn tail_drop_bounds_the_bytes_waiting() {
        // 3000 bytes: two full frames, counting the one in service.
        let s = shape(100_000_000, 3000, 0.0);
        let mut m = DirectionModel::new(1, Direction::Forward);
        let t0 = Duration::from_secs(1);
        let verdicts: Vec<_> = (0..5).map(|_| m.admit(&s, t0, 1500)).collect();
        let delivered = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Deliver(_)))
            .count();
        assert_eq!(delivered, 2, "{verdicts:?}");
        assert!(verdicts[2..].iter().all(|v| *v == Verdict::QueueFull));
    }

    #[test]
    fn loss_is_seeded_and_near_its_rate() {
        let s = shape(0, 0, 0.2);
        let run = |seed| {
            let mut m = DirectionModel::new(seed, Direction::Forward);
            (0..10_000)
                .map(|_| m.admit(&s, Duration::ZERO, 100) == Verdict::Lost)
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same losses");
        assert_ne!(a, run(8));
        let lost = a.iter().filter(|l| **l).count();
        assert!((1800..2200).contains(&lost), "{lost} of 10000 lost at 20%");
    }

    #[test]
    fn directions_draw_independent_streams() {
        let s = shape(0, 0, 0.5);
        let mut f = DirectionModel::new(3, Direction::Forward);
        let mut r = DirectionModel::new(3, Direction::Reverse);
        let fa: Vec<_> = (0..64).map(|_| f.admit(&s, Duration::ZERO, 1)).collect();
        let ra: Vec<_> = (0..64).map(|_| r.admit(&s, Duration::ZERO, 1)).collect();
        assert_ne!(fa, ra);
    }

    #[test]
    fn loss_is_sanitized() {
        assert_eq!(shape(0, 0, 1.5).sanitized().loss, 1.0);
        assert_eq!(shape(0, 0, -1.0).sanitized().loss, 0.0);
        assert_eq!(shape(0, 0, f64::NAN).sanitized().loss, 0.0);
    }
}
