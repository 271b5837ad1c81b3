//! The daemon's share of compliance work: group memberships for retention rules, and finishing
//! hold work that an interrupted `hold add` / `hold release` left behind.

use crate::app::App;
use crate::config::DiscoveryConfig;
use crate::discovery::{self, DiscoveryError};
use crate::graph::GraphClient;
use crate::retention::RetentionRules;

/// Reads the members (ids and UPNs) of every group the retention rules name. Fails when one
/// cannot be read: archiving under a rule whose group is unknown would silently apply the
/// default retention instead.
pub async fn resolve_groups(
    graph: &GraphClient,
    rules: &RetentionRules,
) -> Result<(), DiscoveryError> {
    for group in rules.group_ids() {
        let members =
            discovery::discover_users(graph, &DiscoveryConfig::Group(group.clone())).await?;
        let count = members.len();
        rules.set_group_members(
            &group,
            members
                .into_iter()
                .flat_map(|m| std::iter::once(m.id).chain(m.label)),
        );
        tracing::info!(group.id = %group, members = count, "retention rule group resolved");
    }
    Ok(())
}

impl App {
    /// Sets active holds on objects they do not cover yet and clears released ones. Failures
    /// are logged and retried next pass: they never stop archiving.
    pub async fn reconcile_holds(&self) {
        match crate::compliance::holds::reconcile(&self.state, self.store.as_ref(), "daemon").await
        {
            Ok(w) if w.objects > 0 => {
                tracing::info!(objects = w.objects, "legal hold work finished in the store")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "legal hold reconciliation failed; retried next pass")
            }
        }
    }

    /// Re-reads group memberships for retention rules; keeps the old ones on failure.
    pub async fn refresh_groups(&self) {
        if let Err(e) = resolve_groups(&self.graph, &self.config.retention).await {
            tracing::warn!(error = %e, "retention rule groups not refreshed; keeping the last known members");
        }
    }
}
