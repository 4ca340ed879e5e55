//! `roam bench`'s plot (bench.png): the handover gaps of every system under each
//! workload, and steady state against plain TCP.

use std::path::Path;

use roam_lab::barplot::{self, Bar, Panel};

use super::all::Report;
use super::handover::Workload;

/// The panels of `report` that have data.
pub fn panels(report: &Report) -> Vec<Panel> {
    let mut panels = Vec::new();
    if let Some(h) = &report.handover {
        let workloads: Vec<Workload> = h.options.workloads.clone();
        let mut rows = Vec::new();
        for system in &h.options.systems {
            let bars = workloads
                .iter()
                .enumerate()
                .filter_map(|(i, w)| {
                    let row = h.rows.iter().find(|r| r.system == *system && r.workload == *w)?;
                    Some(match (&row.error, row.gap_ms) {
                        (Some(_), _) => Bar {
                            series: i,
                            value: None,
                            low: None,
                            high: None,
                            mark: None,
                            text: Some("did not run".into()),
                        },
                        (None, Some(g)) => Bar {
                            series: i,
                            value: Some(g.p50.max(0.1)),
                            low: Some(g.p50.max(0.1)),
                            high: Some(g.p90.max(0.1)),
                            mark: Some(g.max.max(0.1)),
                            text: Some(format!(
                                "p50 {:.0} ms{}",
                                g.p50,
                                if row.sessions_died > 0 {
                                    format!(", {} of {} sessions died", row.sessions_died, row.sessions)
                                } else {
                                    String::new()
                                }
                            )),
                        },
                        (None, None) => Bar {
                            series: i,
                            value: None,
                            low: None,
                            high: None,
                            mark: None,
                            text: Some(format!(
                                "{}: {} of {} sessions died",
                                w.label(),
                                row.sessions_died,
                                row.sessions
                            )),
                        },
                    })
                })
                .collect::<Vec<_>>();
            if let Some(first) = h.rows.iter().find(|r| r.system == *system) {
                rows.push((first.label.clone(), bars));
            }
        }
        panels.push(Panel {
            title: format!(
                "Handover gap on the wire, {} moves, {:.0} ms RTT (bar p50, whisker to p90, dot max)",
                h.options.moves, h.options.rtt_ms
            ),
            axis: "milliseconds (log scale)".into(),
            series: workloads.iter().map(|w| w.label().to_owned()).collect(),
            rows,
            reference: Some((2.0 * h.options.rtt_ms, "2 RTT".into())),
        });
    }
    if let Some(s) = &report.steady {
        let rows = s
            .rows
            .iter()
            .filter(|r| r.system != super::systems::System::Plain)
            .map(|r| {
                let bar = |series: usize, x: Option<super::stats::Spread>| Bar {
                    series,
                    value: x.map(|x| x.median),
                    low: x.map(|x| x.min),
                    high: x.map(|x| x.max),
                    mark: None,
                    text: if x.is_none() {
                        Some("no measurement".into())
                    } else {
                        None
                    },
                };
                (
                    r.label.clone(),
                    vec![bar(0, r.goodput_vs_plain), bar(1, r.cpu_vs_plain)],
                )
            })
            .collect();
        panels.push(Panel {
            title: format!(
                "Steady state against plain TCP, {:.0} ms RTT, {} Mbit/s (median of rounds, whisker min-max)",
                s.options.rtt_ms, s.options.rate_mbps
            ),
            axis: "ratio to plain TCP (log scale)".into(),
            series: vec!["goodput".into(), "CPU per GB".into()],
            rows,
            reference: Some((1.0, "plain TCP".into())),
        });
    }
    panels
}

/// Writes the plot to `path` (nothing when no section has data to draw).
pub fn write(report: &Report, path: &Path) -> anyhow::Result<()> {
    let panels = panels(report);
    if panels.is_empty() {
        return Ok(());
    }
    let png = barplot::render(&panels)?;
    std::fs::write(path, png)?;
    Ok(())
}
