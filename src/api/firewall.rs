//! The `Firewall` gRPC service: add, remove, replace and list the CIDR firewall's block and allow
//! rules. Rule lists arrive as client streams (validated whole, applied as one change) and leave
//! as a server stream, in chunks.

use std::pin::Pin;

use futures::Stream;
use ipnet::Ipv4Net;
use tonic::{Request, Response, Status, Streaming};

use super::{invalid, ApiError};
use crate::controller::Controller;
use xdplb_model::firewall::{Action, Rule, RuleBatch};
use xdplb_proto::convert::parse_action;
use xdplb_proto::pb::{self, firewall_server::Firewall};

/// Rules per ListRules reply message (~30 bytes each on the wire).
const LIST_CHUNK: usize = 8192;
/// Prefixes named one by one in the log when a request has at most this many.
const LOG_EACH: usize = 8;

pub(crate) struct FirewallService {
    ctl: Controller,
}

impl FirewallService {
    pub(crate) fn new(ctl: Controller) -> Self {
        Self { ctl }
    }

    async fn capacity(&self) -> usize {
        self.ctl.read(|_, r| r.firewall_capacity()).await
    }
}

/// An optional action filter: UNSPECIFIED means none.
fn parse_filter(field: &str, raw: i32) -> Result<Option<Action>, ApiError> {
    match raw {
        0 => Ok(None),
        _ => Ok(Some(parse_action(field, raw)?)),
    }
}

/// Collects the rules of a stream into one batch, validating each as it arrives; `rules[i]`
/// counts across messages. Refuses more distinct prefixes than the firewall can hold.
struct Collector {
    batch: RuleBatch,
    next_index: usize,
    capacity: usize,
}

impl Collector {
    fn new(capacity: usize) -> Self {
        Self {
            batch: RuleBatch::default(),
            next_index: 0,
            capacity,
        }
    }

    fn take(&mut self, rules: &[pb::FirewallRule]) -> Result<(), ApiError> {
        for rule in rules {
            let i = self.next_index;
            let Rule { net, action } =
                Rule::try_from(rule).map_err(|e| e.within(&format!("rules[{i}]")))?;
            self.batch
                .push(i, net, action)
                .map_err(|e| invalid(format!("rules[{}].{}", e.index, e.field), e.message))?;
            if self.capacity == 0 {
                return Err(xdplb_model::firewall::off_error().into());
            }
            if self.batch.len() > self.capacity {
                return Err(invalid(
                    "rules",
                    format!(
                        "more than {} distinct prefixes; the firewall holds at most {} rules ([firewall] capacity)",
                        self.capacity, self.capacity
                    ),
                ));
            }
            self.next_index += 1;
        }
        Ok(())
    }
}

/// The prefixes of a small batch, for the log ("block 10.0.0.0/8"); None when there are many.
fn named(batch: &RuleBatch) -> Option<Vec<String>> {
    (batch.len() <= LOG_EACH).then(|| batch.iter().map(|(n, a, _)| format!("{a} {n}")).collect())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn pb_rule(net: Ipv4Net, action: Action, id: u32, hits: u64) -> pb::FirewallRule {
    pb::FirewallRule {
        cidr: net.to_string(),
        action: pb::FirewallAction::from(action) as i32,
        id,
        hits,
    }
}

type RuleStream =
    Pin<Box<dyn Stream<Item = Result<pb::ListFirewallRulesResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Firewall for FirewallService {
    async fn add_rules(
        &self,
        request: Request<Streaming<pb::AddFirewallRulesRequest>>,
    ) -> Result<Response<pb::AddFirewallRulesResponse>, Status> {
        let mut rules = Collector::new(self.capacity().await);
        let mut stream = request.into_inner();
        while let Some(msg) = stream.message().await? {
            rules.take(&msg.rules)?;
        }
        // Shared with the change, which the group commit runs on a task of its own.
        let batch = std::sync::Arc::new(rules.batch);
        let staged = std::sync::Arc::clone(&batch);
        let cap = rules.capacity;
        let out = self
            .ctl
            .change(move |s| s.firewall.add(&staged, cap))
            .await?;
        tracing::info!(
            rules = ?named(&batch), requested = batch.len(), added = out.added,
            unchanged = out.unchanged, total = out.total, "firewall rules added"
        );
        Ok(Response::new(pb::AddFirewallRulesResponse {
            added: count(out.added),
            unchanged: count(out.unchanged),
            total: count(out.total),
        }))
    }

    async fn remove_rules(
        &self,
        request: Request<Streaming<pb::RemoveFirewallRulesRequest>>,
    ) -> Result<Response<pb::RemoveFirewallRulesResponse>, Status> {
        let mut rules = Collector::new(self.capacity().await);
        let mut stream = request.into_inner();
        while let Some(msg) = stream.message().await? {
            rules.take(&msg.rules)?;
        }
        // Shared with the change, which the group commit runs on a task of its own.
        let batch = std::sync::Arc::new(rules.batch);
        let staged = std::sync::Arc::clone(&batch);
        let out = self.ctl.change(move |s| s.firewall.remove(&staged)).await?;
        tracing::info!(
            rules = ?named(&batch), removed = out.removed, total = out.total,
            "firewall rules removed"
        );
        Ok(Response::new(pb::RemoveFirewallRulesResponse {
            removed: count(out.removed),
            total: count(out.total),
        }))
    }

    async fn replace_rules(
        &self,
        request: Request<Streaming<pb::ReplaceFirewallRulesRequest>>,
    ) -> Result<Response<pb::ReplaceFirewallRulesResponse>, Status> {
        let mut rules = Collector::new(self.capacity().await);
        let mut stream = request.into_inner();
        let mut only: Option<Option<Action>> = None;
        while let Some(msg) = stream.message().await? {
            let this = parse_filter("only", msg.only)?;
            match only {
                None => only = Some(this),
                Some(first) if this.is_some() && this != first => return Err(invalid(
                    "only",
                    "must be the same in every message of the stream (or unset after the first)",
                )
                .into()),
                Some(_) => {}
            }
            rules.take(&msg.rules)?;
        }
        let only = only.flatten();
        if let Some(only) = only {
            if let Some((net, action, i)) = rules.batch.iter().find(|(_, a, _)| *a != only) {
                return Err(invalid(
                    format!("rules[{i}].action"),
                    format!("{net} is a {action} rule in a replace of the {only} list"),
                )
                .into());
            }
        }
        // Shared with the change, which the group commit runs on a task of its own.
        let batch = std::sync::Arc::new(rules.batch);
        let staged = std::sync::Arc::clone(&batch);
        let cap = rules.capacity;
        let out = self
            .ctl
            .change(move |s| s.firewall.replace(only, &staged, cap))
            .await?;
        let list = only.map_or_else(|| "all".to_string(), |a| a.to_string());
        tracing::info!(
            list, rules = ?named(&batch), added = out.added, changed = out.changed,
            removed = out.removed, unchanged = out.unchanged, total = out.total,
            "firewall rules replaced"
        );
        Ok(Response::new(pb::ReplaceFirewallRulesResponse {
            added: count(out.added),
            changed: count(out.changed),
            removed: count(out.removed),
            unchanged: count(out.unchanged),
            total: count(out.total),
        }))
    }

    type ListRulesStream = RuleStream;

    async fn list_rules(
        &self,
        request: Request<pb::ListFirewallRulesRequest>,
    ) -> Result<Response<Self::ListRulesStream>, Status> {
        let filter = parse_filter("action", request.get_ref().action)?;
        let rows = self
            .ctl
            .read(
                |s, r| -> Result<Vec<(Ipv4Net, Action, u32, u64)>, ApiError> {
                    let hits = r.firewall_hits()?;
                    Ok(s.firewall
                        .rules()
                        .iter()
                        .filter(|(_, a)| filter.is_none_or(|f| f == **a))
                        .map(|(net, action)| {
                            let id = r.firewall_rule_id(net).unwrap_or_default();
                            let h = hits.get(id as usize).copied().unwrap_or_default();
                            (*net, *action, id, h)
                        })
                        .collect())
                },
            )
            .await?;
        let mut rows = rows.into_iter();
        let chunks = std::iter::from_fn(move || {
            let rules: Vec<pb::FirewallRule> = rows
                .by_ref()
                .take(LIST_CHUNK)
                .map(|(n, a, id, h)| pb_rule(n, a, id, h))
                .collect();
            (!rules.is_empty()).then_some(Ok(pb::ListFirewallRulesResponse { rules }))
        });
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, action: pb::FirewallAction) -> pb::FirewallRule {
        pb::FirewallRule {
            cidr: cidr.into(),
            action: action as i32,
            ..Default::default()
        }
    }

    fn refusal(c: &mut Collector, rules: &[pb::FirewallRule]) -> String {
        c.take(rules).expect_err("refused").to_string()
    }

    #[test]
    fn errors_name_the_rule_across_messages() {
        let mut c = Collector::new(10);
        c.take(&[
            rule("10.0.0.0/8", pb::FirewallAction::Block),
            rule("10.1.2.0/24", pb::FirewallAction::Allow),
        ])
        .expect("first chunk");
        assert_eq!(
            refusal(
                &mut c,
                &[
                    rule("192.0.2.0/24", pb::FirewallAction::Block),
                    rule("10.0.0.1/8", pb::FirewallAction::Block)
                ]
            ),
            "rules[3].cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
        let mut c = Collector::new(10);
        assert_eq!(
            refusal(
                &mut c,
                &[rule("10.0.0.0/8", pb::FirewallAction::Unspecified)]
            ),
            "rules[0].action: must be BLOCK or ALLOW"
        );
        let mut c = Collector::new(10);
        assert_eq!(
            refusal(
                &mut c,
                &[
                    rule("10.0.0.0/8", pb::FirewallAction::Block),
                    rule("10.0.0.0/8", pb::FirewallAction::Allow)
                ]
            ),
            "rules[1].action: 10.0.0.0/8 is also rules[0] with action block"
        );
    }

    #[test]
    fn capacity_bounds_distinct_prefixes_only() {
        let mut c = Collector::new(2);
        let same = rule("10.0.0.0/8", pb::FirewallAction::Block);
        c.take(&[same.clone(), same.clone(), same.clone()])
            .expect("duplicates merge");
        c.take(&[rule("10.1.0.0/16", pb::FirewallAction::Block)])
            .expect("second prefix");
        assert!(
            refusal(&mut c, &[rule("10.2.0.0/16", pb::FirewallAction::Block)])
                .starts_with("rules: more than 2 distinct prefixes")
        );
    }
}
