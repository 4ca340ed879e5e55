//! A run as a time series: the measured stream's goodput bin by bin, the moves, and the
//! handover gaps, on one clock (seconds since the run started).
//!
//! [`goodput_series`] counts what [`crate::capture::goodput`] counts (new payload
//! only: per TCP flow, sequence space not seen before), split into bins, so that the
//! plot shows the stream standing still at a move, not the retransmissions that end
//! the standstill. [`Timeline`] adds the moves, each with its gap, and is what
//! [`crate::plot`] draws, `goodput.csv` lists and the JSON report carries.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::capture::{NewPayload, PacketFilter, PacketRecord};
use crate::topology::MoveTimes;

/// The bin width `roam lab` uses unless told otherwise: at 100 Mbit/s a bin holds some
/// 400 full-size segments, and a 100 ms handover gap still empties whole bins.
pub const DEFAULT_BIN: Duration = Duration::from_millis(50);

/// New payload bytes of packets matching `filter`, per `bin` over `[start, end)`: bin
/// `i` covers `[start + i * bin, start + (i + 1) * bin)` (the last one may reach past
/// `end`). TCP payload counts once per flow, when its sequence space is first seen, as in
/// [`crate::capture::goodput`] (a moved flow is still the same flow); packets before
/// `start` only teach what was seen. UDP payload counts as it comes.
///
/// # Panics
/// If `bin` is zero.
pub fn goodput_series(
    records: &[PacketRecord],
    filter: &PacketFilter,
    start: SystemTime,
    end: SystemTime,
    bin: Duration,
) -> Vec<u64> {
    assert!(!bin.is_zero(), "a goodput bin must not be empty");
    let span = end.duration_since(start).unwrap_or_default();
    let bins = span.as_nanos().div_ceil(bin.as_nanos()) as usize;
    let mut bytes = vec![0u64; bins];
    let mut seen = NewPayload::default();
    for r in records.iter().filter(|r| r.payload_len > 0 && filter.matches(r)) {
        let new = seen.count(r);
        if r.time < start || r.time >= end {
            continue;
        }
        let offset = r.time.duration_since(start).unwrap_or_default();
        let i = (offset.as_nanos() / bin.as_nanos()) as usize;
        bytes[i] += new;
    }
    bytes
}

/// One move on the run's clock.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineMove {
    /// Seconds since the run started: the move began (the old address is being deleted).
    pub started_s: f64,
    /// The old subnet's addresses were gone.
    pub old_removed_s: f64,
    /// The new subnet's addresses were on the new interface.
    pub new_added_s: f64,
    /// The default routes pointed at the new subnet: the move was done.
    pub routes_replaced_s: f64,
    pub from: String,
    pub to: String,
    /// The handover gap measured around this move (none if the stream was not flowing).
    pub gap: Option<TimelineGap>,
}

impl TimelineMove {
    pub fn of(times: &MoveTimes, gap: Option<TimelineGap>, run_started: SystemTime) -> TimelineMove {
        let s = |t: SystemTime| seconds_since(t, run_started);
        TimelineMove {
            started_s: s(times.started),
            old_removed_s: s(times.old_removed),
            new_added_s: s(times.new_added),
            routes_replaced_s: s(times.routes_replaced),
            from: format!("{:?}", times.from),
            to: format!("{:?}", times.to),
            gap,
        }
    }
}

/// One handover gap as measured ([`crate::capture::handover_gap`]) on the run's clock.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineGap {
    /// The last payload packet before the silence, seconds since the run started.
    pub from_s: f64,
    /// The first payload packet after it, or the end of the measuring window.
    pub to_s: f64,
    /// A payload packet ended the silence.
    pub recovered: bool,
}

impl TimelineGap {
    pub fn length_ms(&self) -> f64 {
        (self.to_s - self.from_s) * 1e3
    }
}

/// The measured stream over a whole run: goodput per bin, the moves and their gaps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timeline {
    /// Bin width in seconds.
    pub bin_s: f64,
    /// New payload bytes per bin; bin `i` covers `[i * bin_s, (i + 1) * bin_s)` seconds
    /// since the run started.
    pub bytes: Vec<u64>,
    pub moves: Vec<TimelineMove>,
}

/// After the stream's last packet the series goes on this long, so that a plot shows
/// it ending rather than being cut off.
const TAIL: Duration = Duration::from_millis(500);

impl Timeline {
    /// The timeline of a run that started at `started` and whose capture stopped at
    /// `stopped`, with its moves and the gap measured around each: the series runs from
    /// `started` to [`TAIL`] past the later of the last payload packet matching
    /// `filter`, the last move, and the last gap's end (a stream that never recovered is
    /// shown dead up to its measuring window's end), but not past `stopped`.
    ///
    /// # Panics
    /// If `bin` is zero.
    pub fn of_run(
        records: &[PacketRecord],
        filter: &PacketFilter,
        started: SystemTime,
        stopped: SystemTime,
        bin: Duration,
        moves: &[(MoveTimes, Option<TimelineGap>)],
    ) -> Timeline {
        let last_packet = records
            .iter()
            .filter(|r| r.payload_len > 0 && filter.matches(r))
            .map(|r| r.time)
            .max();
        let last_move = moves.iter().map(|(m, _)| m.routes_replaced).max();
        let last_gap = moves
            .iter()
            .filter_map(|(_, g)| g.as_ref())
            .map(|g| started + Duration::from_secs_f64(g.to_s.max(0.0)))
            .max();
        let end = [last_packet, last_move, last_gap]
            .into_iter()
            .flatten()
            .max()
            .map_or(started, |t| t + TAIL)
            .min(stopped)
            .max(started);
        Timeline {
            bin_s: bin.as_secs_f64(),
            bytes: goodput_series(records, filter, started, end, bin),
            moves: moves
                .iter()
                .map(|(m, g)| TimelineMove::of(m, g.clone(), started))
                .collect(),
        }
    }

    /// The moves' gaps, in the order of the moves.
    pub fn gaps(&self) -> impl Iterator<Item = &TimelineGap> {
        self.moves.iter().filter_map(|m| m.gap.as_ref())
    }

    /// Bin `i`'s goodput in Mbit/s.
    pub fn mbps(&self, i: usize) -> f64 {
        self.bytes
            .get(i)
            .map_or(0.0, |b| *b as f64 * 8.0 / self.bin_s / 1e6)
    }

    /// The busiest bin's goodput in Mbit/s (0 for an empty series).
    pub fn peak_mbps(&self) -> f64 {
        (0..self.bytes.len()).map(|i| self.mbps(i)).fold(0.0, f64::max)
    }

    /// Where the series ends, seconds since the run started.
    pub fn end_s(&self) -> f64 {
        self.bytes.len() as f64 * self.bin_s
    }

    /// The series as CSV: one line per bin (start and end in seconds since the run
    /// started, new payload bytes, Mbit/s), after a header line.
    pub fn csv(&self) -> String {
        let mut out = String::from("start_s,end_s,bytes,mbps\n");
        for (i, b) in self.bytes.iter().enumerate() {
            let start = i as f64 * self.bin_s;
            out.push_str(&format!(
                "{start:.3},{:.3},{b},{:.3}\n",
                start + self.bin_s,
                self.mbps(i)
            ));
        }
        out
    }
}

fn seconds_since(t: SystemTime, origin: SystemTime) -> f64 {
    match t.duration_since(origin) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Protocol, TcpFields, TcpFlags};
    use crate::topology::Subnet;
    use std::time::UNIX_EPOCH;

    const MS: Duration = Duration::from_millis(1);

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000) + Duration::from_millis(ms)
    }

    fn tcp(ms: u64, src: &str, seq: u32, len: u32) -> PacketRecord {
        PacketRecord {
            time: at(ms),
            outgoing: false,
            protocol: Protocol::Tcp,
            src: src.parse().unwrap(),
            dst: "10.201.3.2:5001".parse().unwrap(),
            payload_len: len,
            tcp: Some(TcpFields {
                seq,
                ack: 0,
                flags: TcpFlags(TcpFlags::ACK),
            }),
            frame_len: 54 + len,
        }
    }

    fn filter() -> PacketFilter {
        PacketFilter::to(Protocol::Tcp, "10.201.3.2:5001".parse().unwrap())
    }

    #[test]
    fn bins_count_new_payload_only() {
        let a = "10.201.1.2:40000";
        let records = vec![
            tcp(5, a, 0, 1000),
            tcp(20, a, 1000, 1000),
            // A retransmission of the first segment: not new.
            tcp(60, a, 0, 1000),
            // Half new.
            tcp(70, a, 1500, 1000),
            // A pure ACK: no payload.
            tcp(80, a, 0, 0),
            // Another destination: not this stream.
            PacketRecord {
                dst: "10.201.3.2:80".parse().unwrap(),
                ..tcp(90, a, 0, 1000)
            },
            tcp(160, a, 2500, 1000),
        ];
        let bins = goodput_series(&records, &filter(), at(0), at(200), 50 * MS);
        assert_eq!(bins, vec![2000, 500, 0, 1000]);
        // The bins add up to what the window's goodput says.
        let total = crate::capture::goodput(&records, &filter(), at(0), at(200));
        assert_eq!(bins.iter().sum::<u64>(), total.bytes);
    }

    #[test]
    fn a_moved_flow_retransmits_nothing_new_and_fills_its_hole() {
        // After the move B's link sees the flow from A's new address, same ports, same
        // sequence space: what it resends from there is not new.
        let old = "10.201.1.2:40000";
        let new = "10.201.2.2:40000";
        let records = vec![
            tcp(0, old, 0, 1000),
            // The segment at 1000 is lost; 2000 arrives first.
            tcp(10, old, 2000, 1000),
            // After the move: 2000 again (not new), the hole, then fresh data.
            tcp(110, new, 2000, 1000),
            tcp(120, new, 1000, 1000),
            tcp(130, new, 3000, 1000),
            // Another connection of A's (another source port) is its own flow.
            tcp(140, "10.201.2.2:40001", 2000, 500),
        ];
        let bins = goodput_series(&records, &filter(), at(0), at(150), 50 * MS);
        assert_eq!(bins, vec![2000, 0, 2500]);
        let total = crate::capture::goodput(&records, &filter(), at(0), at(150));
        assert_eq!(total.bytes, 4500);
    }

    #[test]
    fn packets_outside_the_window_teach_but_do_not_count() {
        let a = "10.201.1.2:40000";
        let records = vec![
            tcp(0, a, 0, 1000),
            // Seen before the window: its bytes are old news inside it.
            tcp(100, a, 0, 1000),
            tcp(110, a, 1000, 1000),
            // At the window's end: not in it.
            tcp(200, a, 2000, 1000),
        ];
        let bins = goodput_series(&records, &filter(), at(100), at(200), 25 * MS);
        assert_eq!(bins, vec![1000, 0, 0, 0]);
        // An empty or backwards window has no bins.
        assert!(goodput_series(&records, &filter(), at(200), at(100), 25 * MS).is_empty());
        // A window that is not a whole number of bins gets a last partial bin.
        assert_eq!(
            goodput_series(&records, &filter(), at(100), at(130), 25 * MS).len(),
            2
        );
    }

    #[test]
    fn udp_payload_counts_as_it_comes() {
        let mut r = tcp(10, "10.201.1.2:40000", 0, 100);
        r.protocol = Protocol::Udp;
        r.tcp = None;
        let records = vec![
            r,
            PacketRecord { time: at(60), ..r },
            PacketRecord { time: at(65), ..r },
        ];
        let f = PacketFilter::to(Protocol::Udp, "10.201.3.2:5001".parse().unwrap());
        assert_eq!(
            goodput_series(&records, &f, at(0), at(100), 50 * MS),
            vec![100, 200]
        );
    }

    #[test]
    fn a_timeline_spans_the_stream_and_its_moves() {
        let a = "10.201.1.2:40000";
        // 1000 bytes every 10 ms from 1.0 s to 2.0 s, silence to 2.2 s, then to 3.0 s.
        let mut records: Vec<_> = (0..100)
            .map(|i| tcp(1000 + i * 10, a, i as u32 * 1000, 1000))
            .collect();
        records.extend((0..80).map(|i| tcp(2200 + i * 10, a, 100_000 + i as u32 * 1000, 1000)));
        let moved = MoveTimes {
            from: Subnet::One,
            to: Subnet::Two,
            started: at(2000),
            old_removed: at(2001),
            new_added: at(2002),
            routes_replaced: at(2003),
        };
        let gap = TimelineGap {
            from_s: 1.99,
            to_s: 2.2,
            recovered: true,
        };
        let t = Timeline::of_run(
            &records,
            &filter(),
            at(0),
            at(10_000),
            100 * MS,
            &[(moved, Some(gap))],
        );
        // Up to the last packet (2.99 s) and half a second more.
        assert_eq!(t.bytes.len(), 35);
        assert!((t.end_s() - 3.5).abs() < 1e-9);
        assert_eq!(t.bytes[..10], [0; 10]);
        assert_eq!(t.bytes[15], 10_000);
        assert!((t.mbps(15) - 0.8).abs() < 1e-9);
        assert!((t.peak_mbps() - 0.8).abs() < 1e-9);
        // The bins wholly inside the gap are empty; either side they are not.
        assert_eq!(t.bytes[20..22], [0, 0]);
        assert!(t.bytes[19] > 0 && t.bytes[22] > 0);
        assert_eq!(t.moves.len(), 1);
        assert!((t.moves[0].old_removed_s - 2.001).abs() < 1e-9);
        assert_eq!((t.moves[0].from.as_str(), t.moves[0].to.as_str()), ("One", "Two"));
        let gaps: Vec<_> = t.gaps().collect();
        assert_eq!(gaps.len(), 1);
        assert!((gaps[0].length_ms() - 210.0).abs() < 1e-6);

        let csv = t.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "start_s,end_s,bytes,mbps");
        assert_eq!(lines.len(), 36);
        assert_eq!(lines[16], "1.500,1.600,10000,0.800");

        // The capture stopped early: the series stops there too.
        let t = Timeline::of_run(&records, &filter(), at(0), at(1500), 100 * MS, &[]);
        assert_eq!(t.bytes.len(), 15);
        // Nothing matched and nothing moved: an empty series.
        let other = PacketFilter::to(Protocol::Tcp, "10.201.3.2:80".parse().unwrap());
        let t = Timeline::of_run(&records, &other, at(0), at(10_000), 100 * MS, &[]);
        assert!(t.bytes.is_empty());
    }
}
