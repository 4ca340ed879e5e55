//! TCP bulk streams across moves: one move, two moves, a lossy new path, a stopped peer.

use std::time::Duration;

use super::Run;
use crate::netns::LabError;
use crate::topology::LinkId;

pub(super) fn tcp_move(run: &mut Run) -> Result<(), LabError> {
    let (sink, source) = run.bulk(5001)?;
    run.wait_sessions()?;
    run.wait_sent(&source, 0.4)?;
    run.move_a()?;
    run.finish_bulk("bulk a->b", sink, source)
}

pub(super) fn two_moves(run: &mut Run) -> Result<(), LabError> {
    let (sink, source) = run.bulk(5002)?;
    run.wait_sessions()?;
    run.wait_sent(&source, 0.3)?;
    run.move_a()?;
    std::thread::sleep(Duration::from_millis(500));
    run.move_a()?;
    run.finish_bulk("bulk a->b", sink, source)
}

pub(super) fn lossy_new_path(run: &mut Run) -> Result<(), LabError> {
    let (sink, source) = run.bulk(5003)?;
    run.wait_sessions()?;
    run.wait_sent(&source, 0.3)?;
    let link = run.topology.link(LinkId::A2);
    for d in [crate::link::Direction::Forward, crate::link::Direction::Reverse] {
        link.set_loss_for(d, 0.2, Duration::from_secs(2));
    }
    run.move_a()?;
    run.finish_bulk("bulk a->b", sink, source)
}

pub(super) fn peer_stopped(run: &mut Run) -> Result<(), LabError> {
    let (sink, source) = run.bulk(5004)?;
    run.wait_sessions()?;
    run.wait_sent(&source, 0.3)?;
    run.roamds.child("b")?.suspend()?;
    run.move_a()?;
    std::thread::sleep(Duration::from_secs(5));
    run.roamds.child("b")?.resume()?;
    run.notes
        .push("B's roamd was stopped (SIGSTOP) for 5 s from the move".into());
    run.finish_bulk("bulk a->b", sink, source)
}
