//! "Low" arguments: the whole clap command tree of every command group, in this one place,
//! exactly as typed, values kept as raw strings. Nothing here is validated beyond shape (and
//! nothing here depends on another lbctl module); `highargs` and each group's module turn this
//! into checked values.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default path of lbd's gRPC Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/xdplb/lbd.sock";

const GLOBAL: &str = "Global options";

const VIP_ADD_EXAMPLES: &str = "\
Examples:
  lbctl vip add 10.0.0.10:80 --proto tcp
  lbctl vip add 10.0.0.10:53 --proto udp --mode l2dsr
  lbctl vip add 10.0.0.10:80 --proto tcp --health http:/healthz --health-interval 2s --fall 2
  lbctl vip add 10.0.0.10:53 --proto udp --health udp --all-down drop";

const VIP_SET_MODE_EXAMPLES: &str = "\
Examples:
  lbctl vip set-mode 10.0.0.10:80 --proto tcp --mode ipip
  lbctl vip set-mode 10.0.0.10:80 --proto tcp --mode nat";

const BACKEND_SETUP_EXAMPLES: &str = "\
Runs on the backend itself and needs no lbd (root: sysctls, addresses, BPF). lbctl runs
xdplb-backend-setup for it (next to lbctl, else on PATH), which takes the same flags.
Examples:
  lbctl backend-setup --vip 10.0.0.10 --mode l2dsr --dev eth0
  lbctl backend-setup --vip 10.0.0.10 --mode ipip --dev eth0 --lb-source 10.0.1.1
  lbctl backend-setup --vip 10.0.0.10 --mode ipip --dev eth0 --lb-source 10.0.1.0/28 --lb-source 10.0.3.1
  lbctl backend-setup --vip 10.0.0.10 --mode ipip --dev eth0 --undo
(--lb-source: the balancers' [ipip] source, by default their snat_address; IPIP to the VIP from
any other outer source is dropped, since it would bypass the balancers' firewall and rate limits)";

const BACKEND_DRAIN_EXAMPLES: &str = "\
Examples:
  lbctl backend drain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080
  lbctl backend list --vip 10.0.0.10:80 --proto tcp     # FLOWS falls to 0 as flows end
  lbctl backend drain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080 --wait --wait-timeout 10m
  lbctl backend undrain --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080
With --wait, lbctl returns once the backend has no tracked flows left: a closed connection
counts until [timeouts] tcp_closing has passed, an idle one until its idle timeout.
Exit status: 0 drained (no tracked flows left), 3 --wait-timeout passed first (flows left),
1 lbd refused or failed (e.g. the backend was undrained or removed meanwhile), 2 usage.";

const BACKEND_ADD_EXAMPLES: &str = "\
Examples:
  lbctl backend add --vip 10.0.0.10:80 --proto tcp 10.0.2.1:8080
  lbctl backend add --vip 10.0.0.10:80 --proto tcp 10.0.2.2:8080 --weight 50
  lbctl backend add --vip 10.0.0.10:80 --proto tcp 10.0.2.3:8080 10.0.2.4:8080 10.0.2.5:8080
  lbctl backend add --vip 10.0.0.10:80 --proto tcp --file backends.txt
    (one `ADDR:PORT [WEIGHT]` per line, # comments; several backends are added in one
     all-or-nothing call: one bad backend and none is added)
  lbctl add-backend --vip 10.0.0.10:53 --proto udp 10.0.2.1:53";

/// Control lbd, the xdplb XDP layer-4 load balancer daemon.
#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Control lbd, the xdplb XDP layer-4 load balancer daemon",
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct LowArgs {
    /// Path of lbd's gRPC Unix socket
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        value_name = "PATH",
        env = "LBCTL_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    /// Talk to lbd over TCP at this URL (e.g. http://127.0.0.1:50051) instead of the socket;
    /// https://HOST:PORT (or any address with --tls-ca) uses mutual TLS
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "URL", env = "LBCTL_ADDR")]
    pub addr: Option<String>,

    /// TLS: PEM CA certificate that lbd's certificate must be signed by (turns TLS on)
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE", env = "LBCTL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// TLS: PEM client certificate presented to lbd (lbd refuses clients without one)
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE", env = "LBCTL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// TLS: PEM private key of --tls-cert
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE", env = "LBCTL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Print one JSON document instead of human-readable text
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,

    /// Timeout for connecting and for each request (e.g. 5s, 500ms, 1m)
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub timeout: String,

    #[command(subcommand)]
    pub command: LowCommand,
}

#[derive(Debug, Subcommand)]
pub enum LowCommand {
    /// Add, remove and list virtual IPs
    #[command(subcommand)]
    Vip(VipCommand),

    /// Add, remove, reweight and list the backends of a VIP
    #[command(subcommand)]
    Backend(BackendCommand),

    /// Add a backend to a VIP (same as `backend add`)
    #[command(after_help = BACKEND_ADD_EXAMPLES)]
    AddBackend(BackendAddArgs),

    /// Remove a backend from a VIP (same as `backend remove`)
    RemoveBackend(BackendRefArgs),

    /// Firewall: block source prefixes (add, remove, load a list)
    #[command(subcommand)]
    Block(RulesCommand),

    /// Firewall: allow source prefixes, e.g. a hole in a wider block (add, remove, load a list)
    #[command(subcommand)]
    Allow(RulesCommand),

    /// Firewall: list the rules with their hits
    #[command(subcommand)]
    Fw(FwCommand),

    /// Per-client rate limits: set, remove and list policies, show the top offenders
    #[command(subcommand, name = "ratelimit")]
    RateLimit(RateLimitCommand),

    /// Show packet, byte and flow counters per VIP and backend, per reason and per verdict
    Stats,

    /// Prepare this host as a DSR backend of a VIP (VIP on lo, ARP sysctls, IPIP decap); no lbd
    #[command(after_help = BACKEND_SETUP_EXAMPLES)]
    BackendSetup(BackendSetupArgs),

    /// Live packets/s, bits/s and new flows/s per VIP and backend, redrawn in place (Ctrl-C quits)
    Top(TopArgs),

    /// A live sample of real packets with the verdict and reason each got (optionally a pcap)
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),

    /// What the balancer would do with a packet now (firewall, rate limit, flow, backend, next hop), without side effects
    #[command(after_help = EXPLAIN_EXAMPLES)]
    Explain(ExplainArgs),

    /// Make the whole configuration (VIPs, health checks, backends, firewall, rate limits) that of a TOML file, as one change; print the difference
    #[command(after_help = APPLY_EXAMPLES)]
    Apply(ApplyArgs),

    /// Print a shell completion script to stdout
    Completions {
        /// Shell to generate completions for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print lbctl's man page (roff) to stdout, or write it and one page per subcommand to --dir
    Man {
        /// Write lbctl.1 and lbctl-SUBCOMMAND.1 pages into this directory
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum VipCommand {
    /// Add a VIP
    #[command(after_help = VIP_ADD_EXAMPLES)]
    Add(VipAddArgs),

    /// Remove a VIP
    Remove(VipPositional),

    /// Switch a VIP's forwarding mode: new flows use it at once, tracked flows keep theirs
    #[command(after_help = VIP_SET_MODE_EXAMPLES)]
    SetMode(VipSetModeArgs),

    /// Set a VIP's health check (tcp, http, udp or none), its interval, timeout, rise and fall
    #[command(
        after_help = VIP_SET_HEALTH_EXAMPLES,
        mut_arg("health", |a| a.required(true))
    )]
    SetHealth(VipSetHealthArgs),

    /// List configured VIPs
    List,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a backend to a VIP
    #[command(after_help = BACKEND_ADD_EXAMPLES)]
    Add(BackendAddArgs),

    /// Remove a backend from a VIP
    Remove(BackendRefArgs),

    /// Change a backend's weight (0 drains it: no new flows)
    SetWeight(SetWeightArgs),

    /// Drain a backend: weight 0, remembering the weight; tracked flows go on until they end
    #[command(after_help = BACKEND_DRAIN_EXAMPLES)]
    Drain(DrainArgs),

    /// Give a drained backend back the weight it had before `backend drain`
    Undrain(BackendRefArgs),

    /// List the backends of a VIP with their health and tracked flows
    List(VipFlag),

    /// From the balancer, check what breaks backends (port, VIP on lo, ARP, IPIP decap, MTU, veth)
    #[command(after_help = BACKEND_CHECK_EXAMPLES)]
    Check(BackendRefArgs),
}

const BACKEND_CHECK_EXAMPLES: &str = "\
lbd probes the backend from its own namespace, through the path of the VIP's mode, and prints
one line per check (ok, fail, warn or skipped) with the fix under each failure. Exit status 1
when a check failed.
Examples:
  lbctl backend check --vip 10.0.0.10:80 --proto tcp 10.0.2.1:80
  lbctl --json backend check --vip 10.0.0.10:80 --proto tcp 10.0.2.1:80";

/// `vip add ADDR:PORT --proto P [--mode M]`
#[derive(Debug, Args)]
pub struct VipAddArgs {
    #[command(flatten)]
    pub vip: VipPositional,

    /// Forwarding mode: nat, l2dsr or ipip
    #[arg(long, value_name = "MODE", default_value = "nat")]
    pub mode: String,

    #[command(flatten)]
    pub health: HealthArgs,
}

/// `vip set-health ADDR:PORT --proto P --health KIND [...]`
#[derive(Debug, Args)]
pub struct VipSetHealthArgs {
    #[command(flatten)]
    pub vip: VipPositional,

    #[command(flatten)]
    pub health: HealthArgs,
}

/// `vip set-mode ADDR:PORT --proto P --mode M`
#[derive(Debug, Args)]
pub struct VipSetModeArgs {
    #[command(flatten)]
    pub vip: VipPositional,

    /// New forwarding mode: nat, l2dsr or ipip
    #[arg(long, value_name = "MODE")]
    pub mode: String,
}

/// `backend-setup --vip ADDR --mode M --dev IF [--lb-source PREFIX]... [--undo]`
#[derive(Debug, Args)]
pub struct BackendSetupArgs {
    /// The VIP this host serves (an address, no port), e.g. 10.0.0.10
    #[arg(long, value_name = "ADDR")]
    pub vip: String,

    /// How the load balancer reaches this host: l2dsr or ipip
    #[arg(long, value_name = "MODE")]
    pub mode: String,

    /// The interface the VIP's traffic arrives on (ipip: where the decap program goes)
    #[arg(long, value_name = "IF")]
    pub dev: String,

    /// ipip: an outer source prefix the load balancers encapsulate from (their [ipip] source,
    /// e.g. 10.0.1.1 or 10.0.1.0/28); repeatable, at least one. IPIP to the VIP from any other
    /// source is dropped. A setup sets the VIP's prefixes to exactly these; --undo removes them
    #[arg(long, value_name = "PREFIX")]
    pub lb_source: Vec<String>,

    /// Reverse a previous backend-setup for this VIP
    #[arg(long)]
    pub undo: bool,
}

/// A VIP given positionally, with its protocol.
#[derive(Debug, Args)]
pub struct VipPositional {
    /// Virtual IP and port, e.g. 10.0.0.10:80
    #[arg(value_name = "ADDR:PORT")]
    pub vip: String,

    /// Protocol: tcp or udp
    #[arg(long, value_name = "PROTO")]
    pub proto: String,
}

/// A VIP given as `--vip ADDR:PORT --proto P`.
#[derive(Debug, Args)]
pub struct VipFlag {
    /// Virtual IP and port, e.g. 10.0.0.10:80
    #[arg(long, value_name = "ADDR:PORT")]
    pub vip: String,

    /// Protocol of the VIP: tcp or udp
    #[arg(long, value_name = "PROTO")]
    pub proto: String,
}

/// A backend of a VIP: `--vip ADDR:PORT --proto P BACKEND:PORT`.
#[derive(Debug, Args)]
pub struct BackendRefArgs {
    #[command(flatten)]
    pub vip: VipFlag,

    /// Backend (real server) address and port, e.g. 10.0.2.1:8080
    #[arg(value_name = "BACKEND:PORT")]
    pub backend: String,
}

/// `backend drain --vip ADDR:PORT --proto P BACKEND:PORT [--wait [--wait-timeout D]]`
#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub target: BackendRefArgs,

    /// Wait until the backend has no tracked flows left (exit 0), printing the count as it
    /// falls
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up after this long with exit status 3 (e.g. 30s, 10m; default: no
    /// limit). The global --timeout still bounds connecting and each count
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub wait_timeout: Option<String>,
}

/// `backend add` / `add-backend`: one backend, or several in one all-or-nothing call.
#[derive(Debug, Args)]
pub struct BackendAddArgs {
    #[command(flatten)]
    pub vip: VipFlag,

    /// Backend (real server) address and port, e.g. 10.0.2.1:8080; several are added in one
    /// all-or-nothing call
    #[arg(value_name = "BACKEND:PORT", required_unless_present = "file")]
    pub backends: Vec<String>,

    /// Also add the backends listed in FILE ('-': standard input), one `ADDR:PORT [WEIGHT]`
    /// per line ('#' starts a comment), in the same all-or-nothing call
    #[arg(long, value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,

    /// Relative weight (of the backends without one in FILE); 0 means drained (no new flows)
    #[arg(
        long,
        value_name = "N",
        default_value = "100",
        allow_negative_numbers = true
    )]
    pub weight: String,
}

/// `backend set-weight`.
#[derive(Debug, Args)]
pub struct SetWeightArgs {
    #[command(flatten)]
    pub target: BackendRefArgs,

    /// New relative weight; 0 drains the backend (no new flows)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub weight: String,
}

// ---------------------------------------------------------------------------------------
// Health checks (vip add, vip set-health)

pub const VIP_SET_HEALTH_EXAMPLES: &str = "\
Replaces the whole check: flags left out take their defaults. Backends keep their up/down status.
Examples:
  lbctl vip set-health 10.0.0.10:80 --proto tcp --health http:/healthz --fall 2
  lbctl vip set-health 10.0.0.10:53 --proto udp --health udp --health-interval 500ms --health-timeout 200ms
  lbctl vip set-health 10.0.0.10:80 --proto tcp --health none";

/// The health-check flags shared by `vip add` and `vip set-health`.
#[derive(Debug, Clone, Default, Args)]
pub struct HealthArgs {
    /// Probe each backend: tcp (connect), http:/PATH (GET, expect --http-status), udp (send
    /// --udp-payload, expect a reply) or none
    #[arg(long, value_name = "KIND")]
    pub health: Option<String>,

    /// Time between two probes of a backend (100ms..1h)
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,

    /// How long one probe may take (below the interval)
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,

    /// Good probes in a row that bring a down backend back (1..100)
    #[arg(long, value_name = "N")]
    pub rise: Option<String>,

    /// Failed probes in a row that take a backend out (1..100)
    #[arg(long, value_name = "N")]
    pub fall: Option<String>,

    /// When every backend is down: fail-open (keep them all) or drop (new flows are dropped)
    #[arg(long, value_name = "POLICY")]
    pub all_down: Option<String>,

    /// HTTP status an http check expects
    #[arg(long, value_name = "CODE")]
    pub http_status: Option<String>,

    /// What a udp check sends
    #[arg(long, value_name = "TEXT")]
    pub udp_payload: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Firewall (block, allow, fw)

const FW_ADD_EXAMPLES: &str = "\
Examples:
  lbctl block add 192.0.2.0/24 198.51.100.7
  lbctl allow add 10.1.2.0/24        # a hole in a wider block";

const FW_LOAD_EXAMPLES: &str = "\
The file has one IPv4 prefix per line (a bare address is a /32); everything after '#' or ';'
is a comment, so published drop lists (\"1.2.3.0/24 ; SBL123\") load as they are. '-' reads
standard input. With --replace the file becomes the whole block (or allow) list; the rules
with the other action stay. The data plane goes from the old list to the new one with no
moment where neither is in force.

Examples:
  lbctl block load drop.txt --replace
  curl -s https://www.spamhaus.org/drop/drop.txt | lbctl block load - --replace";

/// `lbctl block ...` / `lbctl allow ...`
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Add rules for these prefixes (a prefix that already has this action is left alone)
    #[command(after_help = FW_ADD_EXAMPLES)]
    Add(CidrArgs),

    /// Remove the rules of these prefixes
    Remove(CidrArgs),

    /// Add (or with --replace, replace the list with) the prefixes of a file
    #[command(after_help = FW_LOAD_EXAMPLES)]
    Load(LoadArgs),
}

#[derive(Debug, Args)]
pub struct CidrArgs {
    /// IPv4 prefixes, e.g. 10.0.0.0/8 or 192.0.2.7 (a /32)
    #[arg(value_name = "CIDR", required = true)]
    pub cidrs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// File with one prefix per line ('-': standard input)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Make the file the whole list of this action instead of adding to it
    #[arg(long)]
    pub replace: bool,
}

/// `lbctl fw ...`
#[derive(Debug, Subcommand)]
pub enum FwCommand {
    /// List the firewall rules with their hits (packets each rule decided)
    List {
        /// Only the rules with this action: block or allow
        #[arg(long, value_name = "ACTION")]
        action: Option<String>,
    },
}

// ---------------------------------------------------------------------------------------
// Rate limits (ratelimit)

const RATELIMIT_SET_EXAMPLES: &str = "\
Every client (source address) gets its own bucket: RATE packets per second, bursts of up to
BURST packets. A client falls under the override with the longest prefix that contains it, else
under the default policy (no --cidr). --rate 0 means no limit (e.g. to exempt a prefix).

Examples:
  lbctl ratelimit set --rate 1000 --burst 200                    # default: every client
  lbctl ratelimit set --rate 20 --burst 5 --scope new-flows      # limit connection attempts
  lbctl ratelimit set --rate 0 --cidr 10.0.0.0/8                 # no limit for 10/8
  lbctl ratelimit set --rate 50 --burst 10 --cidr 192.0.2.0/24";

/// `lbctl ratelimit ...`
#[derive(Debug, Subcommand)]
pub enum RateLimitCommand {
    /// Set the default policy, or the override of a prefix (--cidr)
    #[command(after_help = RATELIMIT_SET_EXAMPLES)]
    Set(RateLimitSetArgs),

    /// Remove the override of a prefix, or (without --cidr) reset the default to no limit
    Remove(CidrFlag),

    /// List the policies with their allowed and dropped packets
    List,

    /// List the clients with the most dropped packets
    Top {
        /// How many clients
        #[arg(short = 'n', long = "count", value_name = "N", default_value = "20")]
        count: String,
    },
}

#[derive(Debug, Args)]
pub struct RateLimitSetArgs {
    /// Packets per second per client (0: no limit)
    #[arg(long, value_name = "PPS", allow_negative_numbers = true)]
    pub rate: String,

    /// Packets a client may send at once (at least 1 when --rate > 0)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub burst: Option<String>,

    /// Which packets count: all, or new-flows (connection attempts only)
    #[arg(long, value_name = "SCOPE", default_value = "all")]
    pub scope: String,

    #[command(flatten)]
    pub cidr: CidrFlag,
}

#[derive(Debug, Args)]
pub struct CidrFlag {
    /// IPv4 prefix of the override, e.g. 192.0.2.0/24 (a bare address is a /32); none: the default
    #[arg(long, value_name = "CIDR")]
    pub cidr: Option<String>,
}

// ---------------------------------------------------------------------------------------
// top

/// `lbctl top [--interval D] [--iterations N]`
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Refresh interval, 100ms..1m (e.g. 1s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub interval: String,

    /// Stop after N updates (each update needs one more snapshot than the last); default: run
    /// until Ctrl-C
    #[arg(long, short = 'n', value_name = "N")]
    pub iterations: Option<String>,
}

const EXPLAIN_EXAMPLES: &str = "Examples:
  lbctl explain 192.0.2.7:40000 10.0.0.10:80 --proto tcp
  lbctl explain 192.0.2.7:40000 10.0.0.10:80 --proto tcp --established --json
  lbctl explain 198.51.100.9:5353 10.0.0.10:53 --proto udp --ingress eth1

lbd runs the loaded XDP pipeline, built without its map writes, on the packet (BPF_PROG_TEST_RUN
against the live maps): no flow, SNAT port, rate-limit token or counter changes, nothing is sent.";

/// `lbctl explain CLIENT:PORT VIP:PORT --proto P [--established] [--ingress DEV]`
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The client: ADDR:PORT
    #[arg(value_name = "CLIENT:PORT")]
    pub client: String,

    /// The destination, usually a VIP: ADDR:PORT
    #[arg(value_name = "VIP:PORT")]
    pub vip: String,

    /// tcp or udp
    #[arg(long, value_name = "PROTO")]
    pub proto: String,

    /// TCP: the next packet of a connection (an ACK) rather than its first (a SYN)
    #[arg(long)]
    pub established: bool,

    /// The interface the packet arrives on (default: the one the route back to the client uses)
    #[arg(long, value_name = "DEV")]
    pub ingress: Option<String>,
}

const TRACE_EXAMPLES: &str = "Examples:
  lbctl trace --vip 10.0.0.10:80 --proto tcp --count 20
  lbctl trace --client 192.0.2.0/24 --seconds 30 --pcap /tmp/lb.pcap
  lbctl trace --vip 10.0.0.10 --json";

/// `lbctl trace [--vip ADDR[:PORT]] [--proto P] [--client PREFIX] [--count N] [--seconds S]
/// [--snaplen N] [--pcap FILE]`
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Only packets to this destination: a VIP's address, or address and port (ADDR[:PORT])
    #[arg(long, value_name = "VIP")]
    pub vip: Option<String>,

    /// Only this protocol (tcp or udp)
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,

    /// Only packets from this source prefix (or address)
    #[arg(long, value_name = "PREFIX")]
    pub client: Option<String>,

    /// Stop after N packets, 1..=100000
    #[arg(long, short = 'n', value_name = "N", default_value = "100")]
    pub count: String,

    /// Stop after S seconds, 1..=3600
    #[arg(long, value_name = "S", default_value = "10")]
    pub seconds: String,

    /// Frame bytes captured per packet, 64..=9216
    #[arg(long, value_name = "BYTES", default_value = "1518")]
    pub snaplen: String,

    /// Also write the frames (as the balancer sent them on) to FILE in pcap format
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
}

const APPLY_EXAMPLES: &str = "Examples:
  lbctl apply -f /etc/xdplb/desired.toml --dry-run
  lbctl apply -f /etc/xdplb/desired.toml
  lbctl --json apply -f - < desired.toml

The file holds lbd.toml's desired-state tables only: [[vip]] (address, proto, mode, [vip.health],
[[vip.backend]] address and weight), [firewall] block = [...] allow = [...], [ratelimit.default]
and [[ratelimit.override]] (cidr, rate, burst, scope). What it leaves out is removed. Drained
backends stay drained; health status is kept. A second apply of the same file changes nothing.";

/// `lbctl apply -f FILE [--dry-run]`
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The desired configuration (TOML); - reads standard input
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,

    /// Print the difference only; change nothing
    #[arg(long)]
    pub dry_run: bool,
}
