//! The census `/metrics` shows, counted from the control plane's state at
//! each scrape: every job and instance in the store, what instances ran and
//! cost (the ledger's running time at the catalog's price), the agents'
//! last heartbeats and the pool's members.

use crate::clock::now_ms;
use crate::error::Result;
use crate::ledger;
use crate::metrics::census::Census;

use super::Control;

impl Control {
    /// Counts everything the metrics show of the scheduler's state now.
    pub(crate) fn census(&self) -> Result<Census> {
        let mut census = Census {
            late_after_s: 2.0 * self.settings().heartbeat_interval.as_secs_f64(),
            ..Census::default()
        };
        self.count_jobs(&mut census)?;
        self.count_instances(&mut census)?;
        for (instance_id, heard) in self.links().all_heard() {
            census
                .heartbeats
                .push((instance_id, heard.at.elapsed().as_secs_f64()));
            census.agent_queued += i64::from(heard.load.queued);
            census.agent_in_flight += i64::from(heard.load.in_flight);
        }
        if let Some(pool) = self.machines().pool() {
            census.pool = pool.census();
        }
        Ok(census)
    }

    fn count_jobs(&self, census: &mut Census) -> Result<()> {
        for job in self.store().each_job() {
            let job = job?;
            *census.jobs.entry((job.kind, job.state)).or_default() += 1;
        }
        Ok(())
    }

    /// Instances by state and role, and per machine type and market what
    /// they ran and cost.
    fn count_instances(&self, census: &mut Census) -> Result<()> {
        let now = now_ms();
        let catalog = self.catalog();
        for inst in self.store().instances_where(|_| true)? {
            *census.instances.entry((inst.state, inst.role)).or_default() += 1;
            let Some(machine) = catalog.resolve(&inst.machine_id) else {
                continue;
            };
            let seconds = ledger::running_ms(&inst, now) as f64 / 1000.0;
            let accrued = census
                .machines
                .entry((machine.kind.name.clone(), machine.market))
                .or_default();
            accrued.seconds += seconds;
            accrued.usd += machine.price_per_hour() * seconds / 3600.0;
        }
        Ok(())
    }
}
