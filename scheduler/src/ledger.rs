//! The cost ledger: every instance accrues its machine's hourly price while it
//! is not CLOSED. Running time is kept on the instance record (accumulated
//! when it closes, open interval while it runs), so costs need no replay.

use crate::catalog::Catalog;
use crate::records::{InstanceRecord, JobRecord};
use crate::state::InstanceState;

/// Keeps the running time of every instance whose state a change moved (at
/// `now_ms`) up to date; `old` holds the instances as they were before.
pub fn account_changes(old: &[InstanceRecord], insts: &mut [InstanceRecord], now_ms: u64) {
    for inst in insts {
        let before = old.iter().find(|o| o.id == inst.id).map(|o| o.state);
        if before != Some(inst.state) {
            account(before, inst, now_ms);
        }
    }
}

/// Keeps `inst`'s running time up to date across a state change at `now_ms`.
fn account(before: Option<InstanceState>, inst: &mut InstanceRecord, now_ms: u64) {
    let was_running = before.is_some_and(|s| !s.is_closed());
    let running = !inst.state.is_closed();
    match (was_running, running) {
        (false, true) => inst.running_since_ms = Some(now_ms),
        (true, false) => {
            if let Some(since) = inst.running_since_ms.take() {
                inst.running_ms += now_ms.saturating_sub(since);
            }
        }
        _ => {}
    }
}

/// Milliseconds the instance has held its machine, up to `now_ms`.
pub fn running_ms(inst: &InstanceRecord, now_ms: u64) -> u64 {
    inst.running_ms
        + inst
            .running_since_ms
            .map_or(0, |since| now_ms.saturating_sub(since))
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceCost {
    pub instance_id: String,
    pub price_per_hour: f64,
    pub running_ms: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobCost {
    pub instances: Vec<InstanceCost>,
    pub total_usd: f64,
    /// The same span with the cooling machine (or the standby, without one)
    /// running throughout instead.
    pub always_on_usd: f64,
}

fn hours(ms: u64) -> f64 {
    ms as f64 / 3_600_000.0
}

pub fn job_cost(
    job: &JobRecord,
    instances: &[InstanceRecord],
    catalog: &Catalog,
    now_ms: u64,
) -> JobCost {
    let price = |machine_id: &str| {
        catalog
            .resolve(machine_id)
            .map_or(0.0, |m| m.price_per_hour())
    };
    let cost = |instance_id: &str, machine_id: &str, running_ms: u64| {
        let price_per_hour = price(machine_id);
        InstanceCost {
            instance_id: instance_id.to_string(),
            price_per_hour,
            running_ms,
            cost_usd: price_per_hour * hours(running_ms),
        }
    };
    let mut costs: Vec<InstanceCost> = instances
        .iter()
        .map(|inst| cost(&inst.id, &inst.machine_id, running_ms(inst, now_ms)))
        .collect();
    // The job's span: the time its primary (standby) instances ran.
    let span_ms: u64 = instances
        .iter()
        .zip(&costs)
        .filter(|(inst, _)| inst.role.is_primary())
        .map(|(_, cost)| cost.running_ms)
        .sum();
    // Instances handed to a later job: what they ran for this one.
    costs.extend(
        job.handed_over
            .iter()
            .map(|h| cost(&h.instance_id, &h.machine_id, h.running_ms)),
    );
    let always_on_machine = job.cooling.as_deref().unwrap_or(&job.standby);
    JobCost {
        total_usd: costs.iter().map(|c| c.cost_usd).sum(),
        always_on_usd: price(always_on_machine) * hours(span_ms),
        instances: costs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Role;

    fn instance(id: &str, role: Role, machine: &str) -> InstanceRecord {
        InstanceRecord::launching(id, "j", role, machine, 0)
    }

    /// Moves `inst` to `to` at `at` hours, as the store does.
    fn go(inst: &mut InstanceRecord, to: InstanceState, at_h: f64) {
        let before = Some(inst.state);
        inst.state = to;
        account(before, inst, (at_h * 3_600_000.0) as u64);
    }

    #[test]
    fn the_case_study_day() {
        let catalog = Catalog::shipped();
        let mut job = crate::store::tests::job("j", "u", "m");
        job.standby = "g4dn.4xlarge.od".into();
        job.cooling = Some("g4dn.12xlarge.od".into());
        let mut standby = instance("s", Role::Standby, "g4dn.4xlarge.od");
        let mut cooling = instance("c", Role::Cooling, "g4dn.12xlarge.od");
        account(None, &mut standby, 0);
        account(None, &mut cooling, 0);
        // The cooling instance runs 0-2 h, 6-8 h and 12-14 h of a 16 h day.
        for (start, stop) in [(None, 2.0), (Some(6.0), 8.0), (Some(12.0), 14.0)] {
            if let Some(start) = start {
                go(&mut cooling, InstanceState::LAUNCHING, start);
            }
            go(&mut cooling, InstanceState::STOPPING, stop);
            go(&mut cooling, InstanceState::STOPPED, stop);
        }
        go(&mut standby, InstanceState::TERMINATING, 16.0);
        go(&mut standby, InstanceState::TERMINATED, 16.0);
        let cost = job_cost(
            &job,
            &[standby, cooling],
            &catalog,
            (20.0 * 3_600_000.0) as u64,
        );
        assert_eq!(cost.instances[1].running_ms, 6 * 3_600_000);
        assert!((cost.total_usd - 42.66).abs() < 1e-9, "{cost:?}");
        assert!((cost.always_on_usd - 62.56).abs() < 1e-9, "{cost:?}");
    }

    #[test]
    fn a_running_instance_accrues_until_now() {
        let mut inst = instance("s", Role::Standby, "local.small.od");
        account(None, &mut inst, 1_000);
        assert_eq!(running_ms(&inst, 4_000), 3_000);
        go(&mut inst, InstanceState::EXECUTING, 0.0);
        assert_eq!(running_ms(&inst, 4_000), 3_000, "no restart while running");
    }
}
