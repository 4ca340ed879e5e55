//! What a run leaves for a person to open ([`super::LabOptions::out`]): the report as
//! text and JSON, and the measured stream's goodput over the run as a PNG and a CSV.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{LabOptions, LabReport, MoveReport, Run};
use crate::capture::{CaptureSummary, PacketFilter, Protocol};
use crate::netns::LabError;
use crate::plot::GoodputPlot;
use crate::timeline::{Timeline, TimelineGap};
use crate::topology::Family;

/// The files a run writes, each replaced by the next run into the same directory.
pub const REPORT_TXT: &str = "report.txt";
pub const REPORT_JSON: &str = "report.json";
pub const GOODPUT_PNG: &str = "goodput.png";
pub const GOODPUT_CSV: &str = "goodput.csv";
/// `roam status` as each host's roamd answered it at the end of the run, for people
/// (`.txt`) and as `roam status --json` printed it (`.json`); `{}` is the host (a, b).
pub const ROAM_STATUS_TXT: &str = "roam-status-{}.txt";
pub const ROAM_STATUS_JSON: &str = "roam-status-{}.json";

fn roam_status_files(host: &str) -> [String; 2] {
    [ROAM_STATUS_TXT, ROAM_STATUS_JSON].map(|f| f.replace("{}", host))
}

/// Makes `dir` ready before anything runs: created if missing, refused if it is not a
/// directory, and last run's files removed (a run that plots nothing must not leave
/// an earlier plot looking like its own). Nothing else in it is touched.
pub(super) fn prepare(dir: &Path) -> Result<(), LabError> {
    if dir.exists() && !dir.is_dir() {
        return Err(LabError::Invalid(format!(
            "the output directory {} is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let statuses = ["a", "b"].map(roam_status_files).concat();
    for name in [REPORT_TXT, REPORT_JSON, GOODPUT_PNG, GOODPUT_CSV]
        .into_iter()
        .chain(statuses.iter().map(String::as_str))
    {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LabError::io(format!("removing {}", dir.join(name).display()), e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes the plot and its series into `dir`; returns the plot's path.
pub(super) fn write_plot(
    dir: &Path,
    scenario: &str,
    options: &LabOptions,
    timeline: &Timeline,
) -> Result<PathBuf, LabError> {
    let csv = dir.join(GOODPUT_CSV);
    std::fs::write(&csv, timeline.csv())
        .map_err(|e| LabError::io(format!("writing {}", csv.display()), e))?;
    let png = dir.join(GOODPUT_PNG);
    let plot = GoodputPlot {
        timeline,
        title: title(scenario, options),
        link_mbps: Some(options.rate_bps as f64 / 1e6),
    };
    plot.write(&png)
        .map_err(|e| LabError::Invalid(format!("goodput plot: {e}")))?;
    Ok(png)
}

/// "tcp-move: IPv4, RTT 20 ms, 100 Mbit/s links, roam on (nftables, nudge on)".
fn title(scenario: &str, options: &LabOptions) -> String {
    let roam = if options.roam {
        format!(
            "roam on ({}, nudge {})",
            options.data_plane,
            if options.nudge { "on" } else { "off" }
        )
    } else {
        "roam off".to_owned()
    };
    let family = match options.family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    };
    format!(
        "{scenario}: {family}, RTT {} ms, {} Mbit/s links, {roam}",
        options.rtt.as_millis(),
        options.rate_bps / 1_000_000
    )
}

/// Asks `host`'s roamd for `roam status` over its control socket, as a person would
/// (`roam status --socket SOCKET`), and writes the answer into `dir`; its path, or why
/// not.
pub(super) fn write_roam_status(
    dir: &Path,
    roam: &Path,
    host: &str,
    socket: &Path,
) -> Result<PathBuf, LabError> {
    let [txt, json] = roam_status_files(host);
    for (args, name) in [(&["status"][..], &txt), (&["status", "--json"][..], &json)] {
        let out = std::process::Command::new(roam)
            .args(args)
            .arg("--socket")
            .arg(socket)
            .output()
            .map_err(|e| LabError::io(format!("running {} status", roam.display()), e))?;
        if !out.status.success() {
            return Err(LabError::Invalid(format!(
                "roam status on {host}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let path = dir.join(name);
        std::fs::write(&path, &out.stdout)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(dir.join(txt))
}

/// Writes `report` as `report.txt` and `report.json` into `dir`. A failure is noted in
/// the report (which the caller still prints) rather than losing the run.
pub(super) fn write_report(dir: &Path, report: &mut LabReport) {
    let written = (|| -> Result<(), LabError> {
        let txt = dir.join(REPORT_TXT);
        std::fs::write(&txt, report.to_string())
            .map_err(|e| LabError::io(format!("writing {}", txt.display()), e))?;
        let json = dir.join(REPORT_JSON);
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| LabError::Invalid(format!("report as JSON: {e}")))?;
        std::fs::write(&json, text + "\n").map_err(|e| LabError::io(format!("writing {}", json.display()), e))
    })();
    if let Err(e) = written {
        report.notes.push(format!("the report was not written: {e}"));
    }
}

impl Run {
    /// The measured stream over the whole run (the packets [`Run::measure_moves`]
    /// measures gaps on), with each move and the gap its report found; `None` when the
    /// scenario measures no stream or there is no capture.
    pub(super) fn timeline(
        &self,
        summary: Option<&CaptureSummary>,
        reports: &[MoveReport],
    ) -> Option<Timeline> {
        let filter = self
            .measured_filter
            .or_else(|| self.measured.map(|dst| PacketFilter::to(Protocol::Tcp, dst)))?;
        let moves: Vec<_> = self
            .moves
            .iter()
            .zip(reports)
            .map(|(times, m)| {
                let gap = m.gap_from_s.zip(m.gap_to_s).map(|(from_s, to_s)| TimelineGap {
                    from_s,
                    to_s,
                    recovered: m.recovered,
                });
                (*times, gap)
            })
            .collect();
        Some(Timeline::of_run(
            &summary?.records,
            &filter,
            self.started,
            SystemTime::now(),
            self.options.bin,
            &moves,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("roam-lab-output-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn preparing_creates_the_directory_and_clears_only_last_runs_files() {
        let dir = scratch("prepare");
        prepare(&dir).unwrap();
        assert!(dir.is_dir());
        std::fs::write(dir.join(GOODPUT_PNG), b"old").unwrap();
        std::fs::write(dir.join("b.pcap"), b"keep").unwrap();
        prepare(&dir).unwrap();
        assert!(!dir.join(GOODPUT_PNG).exists());
        assert!(dir.join("b.pcap").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_is_refused_as_the_output_directory_and_left_alone() {
        let dir = scratch("file");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"mine").unwrap();
        let err = prepare(&file).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"mine");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_title_names_the_setup() {
        let mut options = LabOptions::new(PathBuf::from("roam"));
        assert_eq!(
            title("tcp-move", &options),
            "tcp-move: IPv4, RTT 20 ms, 100 Mbit/s links, roam on (nftables, nudge on)"
        );
        options.roam = false;
        assert!(title("tcp-move", &options).ends_with("roam off"));
    }
}
