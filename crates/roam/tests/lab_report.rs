//! What `roam lab` leaves for a person to open: the report as text and JSON, and the
//! measured stream's goodput over the run as a PNG (moves marked, gaps shaded) and a
//! CSV. Needs root, like every lab test; `ROAM_SKIP_NETNS=1` skips it.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use roam_lab::plot::PLOT_SIZE;
use roam_lab::topology::Family;
use support::{assert_survived, lab_with};

const BYTES: u64 = 20_000_000;

#[test]
fn a_run_writes_its_report_and_a_goodput_plot_of_the_move() {
    let out = std::env::temp_dir().join(format!("roam-lab-report-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // Fine bins, so that a gap of a couple of round trips empties whole bins.
    let bin = Duration::from_millis(10);
    let Some(r) = lab_with("tcp-move", Family::V4, |o| {
        o.out = Some(out.clone());
        o.bytes = BYTES;
        o.bin = bin;
    }) else {
        return;
    };
    assert_survived(&r, 1);

    // The plot: where the report says, a PNG of the promised size.
    let plot = PathBuf::from(r.plot.as_deref().expect("a plot was written"));
    assert_eq!(plot, out.join("goodput.png"), "{r}");
    let file = std::fs::File::open(&plot).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("the plot is a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).expect("the plot decodes");
    assert_eq!((info.width, info.height), PLOT_SIZE);
    assert!(
        pixels.chunks(3).any(|p| p != [255, 255, 255]),
        "the plot is blank"
    );

    // The series: the stream flowed before the move and after the gap, and stood
    // still in between.
    let t = r.timeline.as_ref().expect("tcp-move measures a stream");
    assert!((t.bin_s - bin.as_secs_f64()).abs() < 1e-12);
    let m = &r.moves[0];
    let (from, to) = (m.gap_from_s.unwrap(), m.gap_to_s.unwrap());
    assert!(to > from, "{r}");
    let bins = |keep: &dyn Fn(f64, f64) -> bool| -> Vec<u64> {
        (0..t.bytes.len())
            .filter(|i| keep(*i as f64 * t.bin_s, (*i + 1) as f64 * t.bin_s))
            .map(|i| t.bytes[i])
            .collect()
    };
    let before = bins(&|_, end| end <= from);
    let inside = bins(&|start, end| start > from && end <= to);
    let after = bins(&|start, _| start >= to);
    assert!(before.iter().sum::<u64>() > 0, "no payload before the move:\n{r}");
    assert!(after.iter().sum::<u64>() > 0, "no payload after the gap:\n{r}");
    // No payload packet at all came within the gap, so no bin wholly inside it holds
    // new payload; a gap two bins long holds at least one such bin.
    assert!(
        inside.iter().all(|b| *b == 0),
        "payload inside the gap: {inside:?}\n{r}"
    );
    if to - from >= 2.0 * t.bin_s {
        assert!(!inside.is_empty(), "{r}");
    }
    // Every byte the sink received crossed B's link once as new payload: nothing
    // retransmitted after the move (from A's new address) counts twice.
    if !r.notes.iter().any(|n| n.contains("capture")) {
        assert_eq!(t.bytes.iter().sum::<u64>(), BYTES, "{r}");
    }

    // The series as CSV, one line per bin.
    let csv = std::fs::read_to_string(out.join("goodput.csv")).unwrap();
    assert_eq!(csv.lines().count(), t.bytes.len() + 1);
    assert_eq!(csv.lines().next(), Some("start_s,end_s,bytes,mbps"));

    // The report, as text and as JSON, names the plot.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
            .expect("report.json parses");
    assert_eq!(json["plot"], plot.display().to_string());
    assert_eq!(json["scenario"], "tcp-move");
    assert_eq!(json["ok"], true);
    assert_eq!(
        json["timeline"]["bytes"].as_array().map(Vec::len),
        Some(t.bytes.len())
    );
    assert!(json["moves"][0]["gap_from_s"].is_f64());
    let txt = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(
        txt.contains(&format!("goodput plot: {}", plot.display())),
        "{txt}"
    );

    // What `roam status` said on A at the end: the moved flow and its peer; no message
    // dropped by the protocol (the kernel plane's hold drops are expected).
    let status_a = std::fs::read_to_string(out.join("roam-status-a.txt")).expect("roam status of A");
    for needle in [
        "roamd is up",
        "peers (1):",
        "migrated flows (1):",
        "1 flow(s) moved",
    ] {
        assert!(status_a.contains(needle), "{needle:?} in:\n{status_a}");
    }
    assert!(!status_a.contains("drop_"), "{status_a}");
    // And `roam status --json` agrees with what the lab did: one peer (B), one flow,
    // moved from A's subnet-1 address to its subnet-2 address, one move completed.
    let json_a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("roam-status-a.json")).unwrap())
            .expect("roam status --json parses");
    assert_eq!(json_a["peers"].as_array().map(Vec::len), Some(1), "{json_a}");
    let flows: Vec<&serde_json::Value> = json_a["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["original"]["remote"]
                .as_str()
                .is_some_and(|r| r.ends_with(":5001"))
        })
        .collect();
    assert_eq!(flows.len(), 1, "{json_a}");
    let (orig, cur) = (&flows[0]["original"]["local"], &flows[0]["current"]["local"]);
    assert!(orig.as_str().unwrap().starts_with("10.201.1.2:"), "{orig}");
    assert!(cur.as_str().unwrap().starts_with("10.201.2.2:"), "{cur}");
    assert_eq!(flows[0]["moves"], 1, "{json_a}");
    assert_eq!(json_a["counters"]["flows_moved"], 1, "{json_a}");
    assert_eq!(json_a["counters"]["flows_move_failed"], 0, "{json_a}");
    assert!(txt.contains("`roam status` on a:"), "{txt}");

    let _ = std::fs::remove_dir_all(&out);
}
