//! Nodes added and removed by RELOAD, through the simulator.

use super::*;

fn addr(name: &str, i: u8) -> NodeAddr {
    NodeAddr {
        name: name.into(),
        host: format!("10.0.0.{i}"),
        port: 5432,
    }
}

/// A node added to the model: a replica of node 0 with all its WAL.
fn join(sim: &mut Sim, name: &str, i: u8) {
    let mut node = sim.nodes[1].clone();
    node.upstream = Some(0);
    sim.nodes.push(node);
    sim.settings.nodes.push(addr(name, i));
    sim.command(Event::AddNode(addr(name, i)));
}

#[test]
fn an_added_replica_becomes_healthy_and_may_be_promoted() {
    let mut sim = Sim::steady(settings(2));
    join(&mut sim, "n2", 2);
    assert!(sim.refusals.is_empty(), "{:?}", sim.refusals);
    assert_eq!(sim.state().node_named("n2"), Some(2));
    sim.run(1_000);
    assert!(sim.state().node(2).is_some_and(|v| v.healthy));
    // Node 1 falls behind: the newcomer, with the most WAL, is promoted.
    sim.nodes[1].apply_per_tick = Some(0);
    sim.run(500);
    sim.crash(0);
    sim.run_until(10_000, "failover to the new node", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    assert_eq!(sim.primary(), Some(2));
    assert_eq!(sim.epoch(), 2);
}

#[test]
fn a_removed_replica_is_ignored_and_its_slot_taken_again_by_its_name() {
    let mut sim = Sim::steady(settings(3));
    sim.command(Event::RemoveNode { node: 2 });
    assert!(sim.refusals.is_empty(), "{:?}", sim.refusals);
    // Its prober may still answer once: the vacant slot stays vacant.
    sim.run(1_000);
    let view = sim.state().node(2).unwrap();
    assert!(view.removed && !view.healthy && view.report.is_none());
    assert_eq!(sim.state().node_named("n2"), None);
    // It is never promoted, even with the most WAL.
    node_2_ahead(&mut sim);
    sim.crash(0);
    sim.run_until(10_000, "failover", |s| s.epoch() == 2 && s.writes_open());
    assert_eq!(sim.primary(), Some(1));
    // Added again under its name, it takes its old slot.
    sim.command(Event::AddNode(addr("n2", 9)));
    assert_eq!(sim.state().node_named("n2"), Some(2));
    assert_eq!(sim.state().settings().nodes.len(), 3);
    assert_eq!(sim.state().settings().nodes[2].host, "10.0.0.9");
    assert!(!sim.state().removed(2));
}

#[test]
fn the_primary_cannot_be_removed_and_a_name_cannot_be_added_twice() {
    let mut sim = Sim::steady(settings(2));
    sim.command(Event::RemoveNode { node: 0 });
    assert_eq!(sim.refusals.len(), 1);
    assert!(
        sim.refusals[0].contains("n0 cannot be removed: it is the primary"),
        "{:?}",
        sim.refusals
    );
    assert!(!sim.state().removed(0));
    sim.command(Event::AddNode(addr("n1", 7)));
    assert!(
        sim.refusals[1].contains("configured already"),
        "{:?}",
        sim.refusals
    );
    sim.command(Event::RemoveNode { node: 5 });
    assert!(
        sim.refusals[2].contains("no such node"),
        "{:?}",
        sim.refusals
    );
    sim.run(1_000);
    assert!(sim.writes_open());
    assert_eq!(sim.primary(), Some(0));
}

#[test]
fn a_switchover_target_cannot_be_removed_while_it_runs() {
    let mut sim = Sim::steady(settings(3));
    sim.hold_persist = true;
    sim.command(Event::Switchover { target: Some(1) });
    sim.command(Event::RemoveNode { node: 1 });
    assert!(
        sim.refusals
            .iter()
            .any(|r| r.contains("switchover is using it")),
        "{:?}",
        sim.refusals
    );
    assert!(!sim.state().removed(1));
}
