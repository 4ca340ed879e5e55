//! What every scenario test checks of every run.

use roam_sim::{Family, Report, RunOptions, Scenario, builtin};

pub fn scenario(name: &str) -> Scenario {
    builtin::get(name).expect("built in").expect("valid")
}

pub fn run(sc: &Scenario, family: Family, seed: u64) -> Report {
    let r = roam_sim::run(
        sc,
        &RunOptions {
            family,
            seed,
            pcap: None,
        },
    )
    .expect("the run starts");
    assert!(
        r.ok,
        "scenario {} over {family} with seed {seed} failed (replay: roam sim -s {} --family {} --seed {seed}):\n{r}",
        sc.name,
        sc.name,
        if family == Family::Ipv4 { "ipv4" } else { "ipv6" }
    );
    for f in &r.flows {
        assert_eq!(f.bytes_received, f.bytes_expected, "{}", f.name);
        assert_eq!(f.sha256_sent, f.sha256_received, "{}", f.name);
    }
    // No packet ever left a host from an address it no longer had: routers drop those
    // (BCP 38), and roam must never need them to.
    assert_eq!(r.network.ingress_filtered, 0, "{} {family} seed {seed}", sc.name);
    r
}

/// Runs over both families and `seeds`, returning every report.
pub fn run_all(name: &str, seeds: &[u64]) -> Vec<Report> {
    let sc = scenario(name);
    let mut out = Vec::new();
    for family in Family::BOTH {
        for &seed in seeds {
            out.push(run(&sc, family, seed));
        }
    }
    out
}
