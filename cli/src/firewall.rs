//! lbctl's firewall commands: `block`/`allow` `add`/`remove`/`load` and `fw list`. Prefixes are
//! checked here before anything reaches lbd (a list file line by line, `#` and `;` comments as in
//! published drop lists), and large lists are streamed to lbd in chunks.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use ipnet::Ipv4Net;
use tonic::codegen::tokio_stream;
use xdplb_model::cidr::{parse_cidr, CidrError};
use xdplb_model::firewall::Action;

use crate::client::{call, Lbd, RpcError};
use crate::highargs::{invalid, ArgError, Globals};
use crate::lowargs::{CidrArgs, FwCommand, RulesCommand};
use crate::output::{self, action_name, n_prefixes, RuleJson, RuleListJson};
use crate::pb;

/// Rules per message of a streamed list.
pub const CHUNK: usize = 8192;

// ---------------------------------------------------------------------------------------
// High arguments

/// One validated firewall command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firewall {
    Add {
        action: Action,
        prefixes: Vec<Ipv4Net>,
    },
    Remove {
        action: Action,
        prefixes: Vec<Ipv4Net>,
    },
    Load {
        action: Action,
        file: PathBuf,
        replace: bool,
    },
    List {
        action: Option<Action>,
    },
}

impl Firewall {
    /// `block`/`allow` subcommands.
    pub fn rules(action: Action, low: RulesCommand) -> Result<Self, ArgError> {
        let prefixes = |args: &CidrArgs| -> Result<Vec<Ipv4Net>, ArgError> {
            args.cidrs
                .iter()
                .map(|s| parse_cidr(s).map_err(|e| invalid("CIDR", s, e.expected())))
                .collect()
        };
        Ok(match low {
            RulesCommand::Add(args) => Firewall::Add {
                action,
                prefixes: prefixes(&args)?,
            },
            RulesCommand::Remove(args) => Firewall::Remove {
                action,
                prefixes: prefixes(&args)?,
            },
            RulesCommand::Load(args) => Firewall::Load {
                action,
                file: args.file,
                replace: args.replace,
            },
        })
    }

    /// `fw` subcommands.
    pub fn fw(low: FwCommand) -> Result<Self, ArgError> {
        Ok(match low {
            FwCommand::List { action } => Firewall::List {
                action: action.as_deref().map(parse_action).transpose()?,
            },
        })
    }
}

fn parse_action(s: &str) -> Result<Action, ArgError> {
    match s.to_ascii_lowercase().as_str() {
        "block" => Ok(Action::Block),
        "allow" => Ok(Action::Allow),
        _ => Err(invalid("--action", s, "block or allow")),
    }
}

/// The prefixes of a list file, each with its line number (1-based).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List {
    pub prefixes: Vec<Ipv4Net>,
    pub lines: Vec<usize>,
}

/// A list file that does not parse: the first bad line, and how many bad lines there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    pub line: usize,
    pub message: String,
    pub bad_lines: usize,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)?;
        if self.bad_lines > 1 {
            write!(f, " (and {} more bad lines)", self.bad_lines - 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for ListError {}

/// Parses a prefix list: one prefix per line; text from `#` or `;` on is a comment; blank
/// lines are skipped. Every line is checked; the error names the first bad one.
pub fn parse_list(text: &str) -> Result<List, ListError> {
    let mut list = List::default();
    let mut first: Option<(usize, String)> = None;
    let mut bad = 0;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut words = content.split_whitespace();
        let (Some(word), None) = (words.next(), words.next()) else {
            bad += 1;
            first.get_or_insert((
                line,
                format!("'{content}': one prefix per line (comments start with '#' or ';')"),
            ));
            continue;
        };
        match parse_cidr(word) {
            Ok(p) => {
                list.prefixes.push(p);
                list.lines.push(line);
            }
            Err(e) => {
                bad += 1;
                first.get_or_insert((line, describe(&e)));
            }
        }
    }
    match first {
        None => Ok(list),
        Some((line, message)) => Err(ListError {
            line,
            message,
            bad_lines: bad,
        }),
    }
}

/// The message for a list file line that is not a prefix (the line number is added by the caller).
fn describe(e: &CidrError) -> String {
    match e {
        CidrError::Syntax(s) => {
            format!("'{s}' is not an IPv4 prefix (expected A.B.C.D/LEN or A.B.C.D)")
        }
        CidrError::Length(s) => format!("'{s}': the prefix length must be 0..32"),
        CidrError::Ipv6(s) => format!("'{s}' is an IPv6 prefix; only IPv4 is supported yet"),
        CidrError::HostBits { given, normalised } => {
            format!("'{given}' has host bits set; did you mean {normalised}?")
        }
    }
}

fn read_list(file: &Path) -> anyhow::Result<List> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the list from standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    parse_list(&text).map_err(|e| anyhow!("{}: {e}", file_label(file)))
}

fn file_label(file: &Path) -> String {
    if file == Path::new("-") {
        "<stdin>".into()
    } else {
        file.display().to_string()
    }
}

/// A bulk request may take longer than one small RPC: `--timeout` plus a second per 20,000
/// prefixes (lbd writes ~100,000 prefixes a second into the trie).
fn bulk_timeout(base: Duration, prefixes: usize) -> Duration {
    base + Duration::from_secs((prefixes / 20_000) as u64)
}

/// The messages of a streamed list: `make(rules, first)` for every chunk, and at least one
/// message even for an empty list (a replace must still say which list it replaces).
fn chunked<T: Send + 'static>(
    action: Action,
    prefixes: Vec<Ipv4Net>,
    make: impl Fn(Vec<pb::FirewallRule>, bool) -> T + Send + 'static,
) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    let mut rest = prefixes.into_iter().peekable();
    let mut first = true;
    let messages = std::iter::from_fn(move || {
        if !first && rest.peek().is_none() {
            return None;
        }
        let rules = rest
            .by_ref()
            .take(CHUNK)
            .map(|p| pb::FirewallRule {
                cidr: p.to_string(),
                action: pb::FirewallAction::from(action) as i32,
                ..Default::default()
            })
            .collect();
        let msg = make(rules, first);
        first = false;
        Some(msg)
    });
    tokio_stream::iter(messages)
}

/// Points lbd's `rules[N]` at the line of the list file it came from.
fn locate(err: RpcError, file: &Path, lines: &[usize]) -> anyhow::Error {
    let msg = err.to_string();
    let located = (|| {
        let start = msg.find("rules[")?;
        let digits_start = start + "rules[".len();
        let len = msg[digits_start..].find(']')?;
        let index: usize = msg[digits_start..digits_start + len].parse().ok()?;
        let mut end = digits_start + len + 1;
        for field in [".cidr", ".action"] {
            if msg[end..].starts_with(field) {
                end += field.len();
            }
        }
        let line = lines.get(index)?;
        Some(format!(
            "{}{} line {line}{}",
            &msg[..start],
            file_label(file),
            &msg[end..]
        ))
    })();
    match located {
        Some(m) => anyhow!(m),
        None => anyhow::Error::new(err),
    }
}

// ---------------------------------------------------------------------------------------
// Running

/// Runs one firewall command: reads and checks a list file first (no lbd needed for a bad
/// file), then talks to lbd.
pub async fn run(cmd: &Firewall, args: &Globals, out: &mut dyn Write) -> anyhow::Result<()> {
    let list = match cmd {
        Firewall::Load { file, .. } => Some(read_list(file)?),
        _ => None,
    };
    let mut lbd = Lbd::connect(&args.target, args.timeout).await?;
    let t = args.timeout;
    let json = args.json;
    let written = match cmd {
        Firewall::Add { action, prefixes } => {
            let stream = chunked(*action, prefixes.clone(), |rules, _| {
                pb::AddFirewallRulesRequest { rules }
            });
            let timeout = bulk_timeout(t, prefixes.len());
            let r = call(timeout, lbd.firewall.add_rules(stream)).await?;
            let already = match r.unchanged {
                0 => String::new(),
                n => format!(" ({} already had this rule)", n_prefixes(n)),
            };
            let text = format!(
                "{} {}{already}; {} rules in total",
                past(*action),
                n_prefixes(r.added),
                r.total
            );
            let doc = serde_json::json!({
                "added": r.added, "unchanged": r.unchanged, "total": r.total
            });
            output::json_or_text(out, json, &doc, &text)
        }
        Firewall::Remove { action, prefixes } => {
            let stream = chunked(*action, prefixes.clone(), |rules, _| {
                pb::RemoveFirewallRulesRequest { rules }
            });
            let timeout = bulk_timeout(t, prefixes.len());
            let r = call(timeout, lbd.firewall.remove_rules(stream)).await?;
            let text = format!(
                "removed {} {} {}; {} rules in total",
                r.removed,
                action,
                if r.removed == 1 { "rule" } else { "rules" },
                r.total
            );
            let doc = serde_json::json!({ "removed": r.removed, "total": r.total });
            output::json_or_text(out, json, &doc, &text)
        }
        Firewall::Load {
            action,
            file,
            replace,
        } => {
            let list = list.unwrap_or_default();
            let n = list.prefixes.len();
            let timeout = bulk_timeout(t, n);
            let label = file_label(file);
            let (doc, text) = if *replace {
                let only = pb::FirewallAction::from(*action) as i32;
                let stream = chunked(*action, list.prefixes, move |rules, first| {
                    pb::ReplaceFirewallRulesRequest {
                        only: if first { only } else { 0 },
                        rules,
                    }
                });
                let r = call(timeout, lbd.firewall.replace_rules(stream))
                    .await
                    .map_err(|e| locate(e, file, &list.lines))?;
                let doc = serde_json::json!({
                    "file": label, "prefixes": n, "added": r.added, "changed": r.changed,
                    "removed": r.removed, "unchanged": r.unchanged, "total": r.total
                });
                let text = format!(
                    "replaced the {} list with {} from {label}: {} added, {} changed, {} removed, {} unchanged; {} rules in total",
                    action,
                    n_prefixes(count(n)),
                    r.added,
                    r.changed,
                    r.removed,
                    r.unchanged,
                    r.total
                );
                (doc, text)
            } else {
                let stream = chunked(*action, list.prefixes, |rules, _| {
                    pb::AddFirewallRulesRequest { rules }
                });
                let r = call(timeout, lbd.firewall.add_rules(stream))
                    .await
                    .map_err(|e| locate(e, file, &list.lines))?;
                let doc = serde_json::json!({
                    "file": label, "prefixes": n, "added": r.added,
                    "unchanged": r.unchanged, "total": r.total
                });
                let text = format!(
                    "loaded {} from {label}: {} added, {} already there; {} rules in total",
                    n_prefixes(count(n)),
                    r.added,
                    r.unchanged,
                    r.total
                );
                (doc, text)
            };
            output::json_or_text(out, json, &doc, &text)
        }
        Firewall::List { action } => {
            let req = pb::ListFirewallRulesRequest {
                action: action.map_or(0, |a| pb::FirewallAction::from(a) as i32),
            };
            let mut stream = call(t, lbd.firewall.list_rules(req)).await?;
            let mut rules = Vec::new();
            loop {
                let next = tokio::time::timeout(t, stream.message())
                    .await
                    .map_err(|_| anyhow!("lbd stopped sending the rule list for {t:?}"))?
                    .map_err(RpcError)?;
                match next {
                    Some(chunk) => rules.extend(chunk.rules),
                    None => break,
                }
            }
            if json {
                let rules = rules
                    .into_iter()
                    .map(|r| RuleJson {
                        action: action_name(r.action),
                        cidr: r.cidr,
                        hits: r.hits,
                        id: r.id,
                    })
                    .collect();
                output::write_json(out, &RuleListJson { rules })
            } else {
                output::firewall_rules(out, &rules, action_name)
            }
        }
    };
    written.context("cannot write to stdout")
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// "blocked 2 prefixes" / "allowed 1 prefix"
fn past(action: Action) -> &'static str {
    match action {
        Action::Block => "blocked",
        Action::Allow => "allowed",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use std::net::Ipv4Addr;

    use tonic::service::Routes;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::pb::firewall_server::{Firewall as FirewallApi, FirewallServer};

    fn p(s: &str) -> Ipv4Net {
        parse_cidr(s).expect("test prefix")
    }

    #[test]
    fn drop_list_format_parses() {
        let text = "\u{feff}; Spamhaus DROP List 2024/01/01 - (c) 2024 The Spamhaus Project\r\n\
                    ; Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\
                    1.10.16.0/20 ; SBL256894\r\n\
                    \r\n\
                    # a hash comment\n\
                    \t2.56.192.0/22;SBL459831\n\
                    203.0.113.9   # one host\n";
        let list = parse_list(text).expect("drop list parses");
        assert_eq!(
            list.prefixes,
            vec![p("1.10.16.0/20"), p("2.56.192.0/22"), p("203.0.113.9/32")]
        );
        assert_eq!(list.lines, vec![3, 6, 7]);
        assert_eq!(parse_list("").expect("empty list"), List::default());
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let e = parse_list("10.0.0.0/8\n\n10.1.0.1/16 ; typo\nnonsense\n10.2.0.0/16 extra\n")
            .expect_err("bad list");
        assert_eq!(
            e.to_string(),
            "line 3: '10.1.0.1/16' has host bits set; did you mean 10.1.0.0/16? (and 2 more bad lines)"
        );
        let e = parse_list("10.0.0.0/8 10.1.0.0/16\n").expect_err("two on a line");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("one prefix per line"), "{e}");
    }

    #[test]
    fn arguments_are_checked_before_any_rpc() {
        let e = Firewall::rules(
            Action::Block,
            RulesCommand::Add(CidrArgs {
                cidrs: vec!["10.0.0.0/8".into(), "10.0.0.1/8".into()],
            }),
        )
        .expect_err("host bits");
        assert_eq!(
            e.to_string(),
            "invalid CIDR '10.0.0.1/8': expected a prefix without host bits set (did you mean 10.0.0.0/8?)"
        );
        let e = Firewall::fw(FwCommand::List {
            action: Some("deny".into()),
        })
        .expect_err("bad action");
        assert_eq!(
            e.to_string(),
            "invalid --action 'deny': expected block or allow"
        );
    }

    #[test]
    fn lbd_rule_indexes_point_at_file_lines() {
        let err = RpcError(Status::already_exists(
            "rules[2].cidr: 10.1.2.0/24 already has a rule with action allow; remove it first",
        ));
        let e = locate(err, Path::new("drop.txt"), &[3, 7, 12]);
        assert_eq!(
            e.to_string(),
            "already exists: drop.txt line 12: 10.1.2.0/24 already has a rule with action allow; remove it first"
        );
        let other = RpcError(Status::internal("map update failed"));
        assert_eq!(
            locate(other, Path::new("x"), &[1]).to_string(),
            "internal: map update failed"
        );
    }

    /// Records what lbctl streams; answers from the rules it saw.
    #[derive(Default)]
    struct FakeFirewall {
        messages: Mutex<Vec<(i32, Vec<pb::FirewallRule>)>>,
    }

    impl FakeFirewall {
        /// Records each message of `stream` as (only, rules); the number of rules seen.
        async fn record<M>(
            &self,
            mut stream: Streaming<M>,
            split: impl Fn(M) -> (i32, Vec<pb::FirewallRule>),
        ) -> Result<u32, Status> {
            let mut n = 0;
            while let Some(m) = stream.message().await? {
                let (only, rules) = split(m);
                n += rules.len() as u32;
                self.messages
                    .lock()
                    .map_err(|_| Status::internal("poisoned"))?
                    .push((only, rules));
            }
            Ok(n)
        }
    }

    #[tonic::async_trait]
    impl FirewallApi for FakeFirewall {
        async fn add_rules(
            &self,
            req: Request<Streaming<pb::AddFirewallRulesRequest>>,
        ) -> Result<Response<pb::AddFirewallRulesResponse>, Status> {
            let n = self.record(req.into_inner(), |m| (0, m.rules)).await?;
            Ok(Response::new(pb::AddFirewallRulesResponse {
                added: n,
                unchanged: 0,
                total: n,
            }))
        }

        async fn remove_rules(
            &self,
            _req: Request<Streaming<pb::RemoveFirewallRulesRequest>>,
        ) -> Result<Response<pb::RemoveFirewallRulesResponse>, Status> {
            Err(Status::not_found(
                "rules[0].cidr: there is no rule for 10.0.0.0/8",
            ))
        }

        async fn replace_rules(
            &self,
            req: Request<Streaming<pb::ReplaceFirewallRulesRequest>>,
        ) -> Result<Response<pb::ReplaceFirewallRulesResponse>, Status> {
            let n = self.record(req.into_inner(), |m| (m.only, m.rules)).await?;
            Ok(Response::new(pb::ReplaceFirewallRulesResponse {
                added: n,
                total: n,
                ..Default::default()
            }))
        }

        type ListRulesStream = std::pin::Pin<
            Box<
                dyn tokio_stream::Stream<Item = Result<pb::ListFirewallRulesResponse, Status>>
                    + Send,
            >,
        >;

        async fn list_rules(
            &self,
            _req: Request<pb::ListFirewallRulesRequest>,
        ) -> Result<Response<Self::ListRulesStream>, Status> {
            let rule = |cidr: &str, action: pb::FirewallAction, id, hits| pb::FirewallRule {
                cidr: cidr.into(),
                action: action as i32,
                id,
                hits,
            };
            let chunks = vec![
                Ok(pb::ListFirewallRulesResponse {
                    rules: vec![rule("10.0.0.0/8", pb::FirewallAction::Block, 0, 1234)],
                }),
                Ok(pb::ListFirewallRulesResponse {
                    rules: vec![rule("10.1.2.0/24", pb::FirewallAction::Allow, 1, 5)],
                }),
            ];
            Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
        }
    }

    async fn lbctl(socket: &Path, json: bool, cmd: Firewall) -> anyhow::Result<String> {
        let mut buf = Vec::new();
        run(&cmd, &crate::testlbd::globals(socket, json), &mut buf).await?;
        Ok(String::from_utf8(buf)?)
    }

    #[tokio::test]
    async fn lists_are_streamed_in_chunks_and_rules_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("lbd.sock");
        let fake = std::sync::Arc::new(FakeFirewall::default());
        crate::testlbd::serve(&socket, Routes::new(FirewallServer::from_arc(fake.clone())));

        // 20,000 /32s: three messages, the first carrying the list being replaced.
        let file = dir.path().join("drop.txt");
        let text: String = (0..20_000u32)
            .map(|i| format!("{} ; SBL{i}\n", Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        std::fs::write(&file, text).expect("write list");
        let said = lbctl(
            &socket,
            false,
            Firewall::Load {
                action: Action::Block,
                file: file.clone(),
                replace: true,
            },
        )
        .await
        .expect("block load --replace");
        assert!(
            said.starts_with("replaced the block list with 20000 prefixes from "),
            "{said}"
        );
        let messages = std::mem::take(&mut *fake.messages.lock().expect("lock"));
        let sizes: Vec<usize> = messages.iter().map(|(_, r)| r.len()).collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, 20_000 - 2 * CHUNK]);
        let onlys: Vec<i32> = messages.iter().map(|(o, _)| *o).collect();
        assert_eq!(onlys, vec![pb::FirewallAction::Block as i32, 0, 0]);
        assert_eq!(messages[0].1[1].cidr, "10.0.0.1/32");

        // An empty list still says which list it replaces.
        std::fs::write(&file, "# nothing left\n").expect("write list");
        lbctl(
            &socket,
            false,
            Firewall::Load {
                action: Action::Allow,
                file: file.clone(),
                replace: true,
            },
        )
        .await
        .expect("allow load --replace of an empty list");
        let messages = std::mem::take(&mut *fake.messages.lock().expect("lock"));
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].0, pb::FirewallAction::Allow as i32);

        // A bad file never reaches lbd.
        std::fs::write(&file, "10.0.0.0/8\n10.0.0.1/8\n").expect("write list");
        let e = lbctl(
            &socket,
            false,
            Firewall::Load {
                action: Action::Block,
                file: file.clone(),
                replace: false,
            },
        )
        .await
        .expect_err("host bits");
        assert_eq!(
            format!("{e:#}"),
            format!(
                "{}: line 2: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
                file.display()
            )
        );
        assert!(fake.messages.lock().expect("lock").is_empty());

        let human = lbctl(&socket, false, Firewall::List { action: None })
            .await
            .expect("fw list");
        assert_eq!(
            human,
            "ACTION  PREFIX       HITS  ID\n\
             block   10.0.0.0/8   1234   0\n\
             allow   10.1.2.0/24     5   1\n"
        );
        let json = lbctl(&socket, true, Firewall::List { action: None })
            .await
            .expect("fw list --json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
        assert_eq!(v["rules"][0]["cidr"], "10.0.0.0/8");
        assert_eq!(v["rules"][0]["action"], "block");
        assert_eq!(v["rules"][0]["hits"], 1234);
        assert_eq!(v["rules"][1]["action"], "allow");

        let e = lbctl(
            &socket,
            false,
            Firewall::Remove {
                action: Action::Block,
                prefixes: vec![p("10.0.0.0/8")],
            },
        )
        .await
        .expect_err("not found");
        assert_eq!(
            format!("{e:#}"),
            "not found: rules[0].cidr: there is no rule for 10.0.0.0/8"
        );
    }
}
