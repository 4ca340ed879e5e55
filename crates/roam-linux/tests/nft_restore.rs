//! A restarted daemon gets its entries back in the transaction that recreates its table
//! (`NftDataPlane::open_restoring`): a stream crossing a move keeps flowing while X's
//! plane is handed over (as at a crash or an upgrade) and reopened with the persisted
//! entries; a clashing entry among them is refused alone.

mod common_nft;
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common_nft::*;
use roam_core::translate::{FlowMapping, Protocol, TableChange};
use roam_linux::nft::{NftConfig, NftDataPlane};

fn config(ns: &Netns) -> NftConfig {
    NftConfig {
        netns: Some(ns.path()),
        ..NftConfig::default()
    }
}

#[test]
fn a_moved_stream_survives_its_plane_being_reopened_with_the_persisted_entries() {
    if !netns_available() {
        return;
    }
    let mut t = TwoPlanes::open(V4, |ns, _| ns.plane());
    let s = t.lab.stream(StreamSpec {
        total: 48 << 20,
        ..StreamSpec::default()
    });
    t.move_x(s.original, s.current, OldPath::Cut);
    let persisted: Vec<TableChange> =
        t.px.entries()
            .flows
            .into_iter()
            .map(TableChange::InstallFlow)
            .collect();
    assert_eq!(persisted.len(), 1);
    let before = s.stream.received.load(Ordering::Relaxed);
    // The daemon goes (its table stays: a crash, or a stop that keeps entries) ...
    let TwoPlanes { lab, px, py } = t;
    px.detach();
    // ... and comes back, replacing the table with the persisted entries at once.
    let (px, refused) = NftDataPlane::open_restoring(config(&lab.x), &persisted).expect("reopen");
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(px.entries().flows.len(), 1);
    assert_eq!(px.entries().flows[0].current, s.current);
    let c = px.counters().unwrap();
    s.stream
        .wait_received(before + (4 << 20), Duration::from_secs(10));
    s.finish_intact(Duration::from_secs(30));
    let after = px.counters().unwrap();
    assert!(
        after.egress_translated.packets > c.egress_translated.packets,
        "the reopened plane translates: {after:?}"
    );
    drop((px, py, lab));
}

#[test]
fn a_clashing_persisted_entry_is_refused_alone() {
    if !netns_available() {
        return;
    }
    let lab = Lab::new(V4);
    let a = lab.a;
    let o1 = tuple(Protocol::Tcp, sa(a.x1, 40000), sa(a.y, 5001));
    let o2 = tuple(Protocol::Tcp, sa(a.x1, 40001), sa(a.y, 5001));
    let cur = tuple(Protocol::Tcp, sa(a.x2, 40000), sa(a.y, 5001));
    let entry = |original, current| {
        TableChange::InstallFlow(FlowMapping {
            original,
            current,
            hold: false,
        })
    };
    // Two originals on one current tuple: the second breaks the table's invariants.
    let (p, refused) =
        NftDataPlane::open_restoring(config(&lab.x), &[entry(o1, cur), entry(o2, cur)]).expect("open");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, entry(o2, cur));
    let flows = p.entries().flows;
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].original, o1);
    // The kernel has the one that was accepted.
    let listed = lab
        .x
        .exec("nft", &["list", "map", "inet", "roam", "eg4tcp"])
        .unwrap();
    assert!(
        listed.contains(&format!("{} . 40000 . {} . 5001", a.x1, a.y)),
        "{listed}"
    );
    assert!(!listed.contains("40001"), "{listed}");
}
