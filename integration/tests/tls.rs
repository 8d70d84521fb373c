//! The control plane's front doors: the Unix socket is 0600 and root's, the TCP listener off
//! loopback needs mutual TLS (lbd refuses to start without it, before touching the data plane),
//! and over TLS only a client with a certificate from the configured client CA gets an answer.
//! Certificates are made at test time with rcgen; no key is checked in.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tempfile::TempDir;
use xdplb_integration::procs::bin_dir;
use xdplb_integration::topology::unique_pin_path;
use xdplb_integration::{lbd_config, Lbd, NetNs, Topology};

const PORT: u16 = 50051;

/// A CA and PEM files of certificates it signed, in a temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

/// Writes `<name>.pem` and `<name>.key` for a leaf certificate signed by `issuer`.
fn leaf(
    dir: &Path,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write cert");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
}

/// The lab's CA (signs lbd's certificate for `server_ip` and the good client's) and a rogue CA
/// (signs the other client's): `ca.pem`, `lbd.{pem,key}`, `client.{pem,key}`, `rogue-ca.pem`,
/// `rogue.{pem,key}`.
fn pki(server_ip: &str) -> Pki {
    let dir = tempfile::Builder::new()
        .prefix("xdplb-tls-")
        .tempdir()
        .expect("tempdir");
    let ca = ca("xdplb test CA");
    let rogue = ca_named_rogue();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
    std::fs::write(dir.path().join("rogue-ca.pem"), rogue.pem()).expect("write rogue CA");
    leaf(
        dir.path(),
        "lbd",
        &[server_ip],
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
    );
    leaf(
        dir.path(),
        "client",
        &["operator.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca,
    );
    leaf(
        dir.path(),
        "rogue",
        &["operator.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &rogue,
    );
    Pki { dir }
}

fn ca_named_rogue() -> CertifiedIssuer<'static, KeyPair> {
    ca("xdplb test CA") // same name, other key: only the signature tells them apart
}

/// Runs `lbctl args...` inside `ns` (bounded by `timeout(1)`); (success, stdout + stderr).
fn lbctl_in(ns: &NetNs, args: &[&str]) -> (bool, String) {
    let lbctl = bin_dir().expect("bin dir").join("lbctl");
    let out = Command::new("timeout")
        .args(["--kill-after=2", "20"])
        .arg("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(&lbctl)
        .args(["--timeout", "5s"])
        .args(args)
        .env_remove("LBCTL_ADDR")
        .env_remove("LBCTL_SOCKET")
        .output()
        .expect("running lbctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn mutual_tls_admits_only_clients_of_the_client_ca() {
    let topo = Topology::two_arm(1).expect("topology");
    let lb_ip = topo.lb_addr().to_string();
    let pki = pki(&lb_ip);
    let config = format!(
        "{}\n[api]\ngrpc_listen = \"{lb_ip}:{PORT}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
        topo.lbd_config(),
        pki.p("lbd.pem"),
        pki.p("lbd.key"),
        pki.p("ca.pem"),
    );
    let lbd = Lbd::start(topo.lb(), &config).expect("lbd with TLS starts");
    assert!(
        lbd.log_text()
            .contains("gRPC API listening on TCP with mutual TLS"),
        "{}",
        lbd.log_text()
    );

    // The Unix socket: 0600, root's.
    let meta = std::fs::metadata(lbd.socket()).expect("stat socket");
    assert_eq!(meta.mode() & 0o7777, 0o600, "socket mode");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "socket owner");

    let url = format!("https://{lb_ip}:{PORT}");
    let ca_pem = pki.p("ca.pem");
    let good = |extra: &[&str]| {
        let mut a = vec!["--addr", url.as_str(), "--tls-ca", ca_pem.as_str()];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        lbctl_in(topo.client(), &refs)
    };
    let client_cert = [
        "--tls-cert".to_string(),
        pki.p("client.pem"),
        "--tls-key".to_string(),
        pki.p("client.key"),
    ];
    let with_client = |cmd: &[&str]| {
        let mut a = good(&[]);
        a.extend(client_cert.iter().cloned());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    };

    // An authenticated client changes and reads state from the client namespace.
    let (ok, out) = run(with_client(&[
        "vip",
        "add",
        "10.200.100.1:80",
        "--proto",
        "tcp",
    ]));
    assert!(ok, "authenticated vip add failed: {out}");
    let (ok, out) = run(with_client(&["--json", "vip", "list"]));
    assert!(
        ok && out.contains("10.200.100.1"),
        "vip list over TLS: {out}"
    );
    let before = lbd
        .ctl(&["--json", "vip", "list"])
        .expect("list over the socket");

    // Refused: no client certificate; a certificate of another CA; plain HTTP/2 to the TLS port;
    // a client that does not trust lbd's CA.
    let mut refused = Vec::new();
    let (ok, out) = run({
        let mut a = good(&[]);
        a.extend(["vip", "add", "10.200.100.2:80", "--proto", "tcp"].map(String::from));
        a
    });
    refused.push(("no client certificate", ok, out));
    let (ok, out) = run({
        let mut a = good(&[
            "--tls-cert",
            &pki.p("rogue.pem"),
            "--tls-key",
            &pki.p("rogue.key"),
        ]);
        a.extend(["vip", "add", "10.200.100.2:80", "--proto", "tcp"].map(String::from));
        a
    });
    refused.push(("client certificate of another CA", ok, out));
    let (ok, out) = lbctl_in(
        topo.client(),
        &[
            "--addr",
            &format!("http://{lb_ip}:{PORT}"),
            "vip",
            "add",
            "10.200.100.2:80",
            "--proto",
            "tcp",
        ],
    );
    refused.push(("plain HTTP/2", ok, out));
    let (ok, out) = run({
        let mut a = vec![
            "--addr".to_string(),
            url.clone(),
            "--tls-ca".to_string(),
            pki.p("rogue-ca.pem"),
        ];
        a.extend(client_cert.iter().cloned());
        a.extend(["vip", "list"].map(String::from));
        a
    });
    refused.push(("lbd's certificate not trusted", ok, out));
    for (what, ok, out) in &refused {
        assert!(!ok, "{what}: lbctl succeeded: {out}");
        assert!(
            out.starts_with("lbctl: "),
            "{what}: not a one-line lbctl error: {out}"
        );
        eprintln!("{what}: {}", out.trim());
    }
    // Nothing the refused clients sent reached the state.
    assert_eq!(
        lbd.ctl(&["--json", "vip", "list"]).expect("list"),
        before,
        "state changed"
    );
    // And lbd still serves the authenticated client.
    let (ok, out) = run(with_client(&[
        "vip",
        "remove",
        "10.200.100.1:80",
        "--proto",
        "tcp",
    ]));
    assert!(ok, "authenticated client after refusals: {out}");
}

/// Runs lbd in `ns` with `config` and expects it to refuse to start: (exit status, stderr).
fn lbd_refuses(ns: &NetNs, config: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lbd.toml");
    std::fs::write(&file, config).expect("write config");
    let out = Command::new("timeout")
        .args(["--kill-after=2", "20"])
        .arg("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(bin_dir().expect("bin dir").join("lbd"))
        .arg("--config")
        .arg(&file)
        .arg("--socket")
        .arg(dir.path().join("lbd.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--detach-on-exit")
        .env("NO_COLOR", "1")
        .output()
        .expect("running lbd");
    assert!(
        !dir.path().join("lbd.sock").exists(),
        "a refused lbd left a socket"
    );
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lbd_refuses_a_non_loopback_listener_without_tls() {
    let ns = NetNs::new("tlsrefuse").expect("namespace");
    // A veth pair: native XDP needs a driver that has it (dummy has not).
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])
    .expect("veth");
    ns.ip(&["link", "set", "eth1", "up"]).expect("up");
    ns.ip(&["addr", "add", "10.200.70.1/24", "dev", "eth0"])
        .expect("address");
    ns.ip(&["link", "set", "eth0", "up"]).expect("up");
    let pin = unique_pin_path();
    let base = lbd_config(
        &["eth0".to_string()],
        &pin,
        "10.200.70.1".parse().expect("ip"),
    );
    let pki = pki("10.200.70.1");
    let cases = [
        (
            format!("{base}\n[api]\ngrpc_listen = \"10.200.70.1:{PORT}\"\n"),
            "refusing to serve the gRPC API on 10.200.70.1:50051 without TLS client authentication",
        ),
        (
            format!("{base}\n[api]\ngrpc_listen = \"0.0.0.0:{PORT}\"\n"),
            "refusing to serve the gRPC API on 0.0.0.0:50051 without TLS client authentication",
        ),
        (
            format!(
                "{base}\n[api]\ngrpc_listen = \"10.200.70.1:{PORT}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                pki.p("lbd.pem"),
                pki.p("lbd.key")
            ),
            "TLS needs --tls-cert, --tls-key and --tls-client-ca together (missing --tls-client-ca)",
        ),
        (
            format!(
                "{base}\n[api]\ngrpc_listen = \"10.200.70.1:{PORT}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
                pki.p("lbd.pem"),
                pki.p("rogue.key"),
                pki.p("ca.pem")
            ),
            "invalid TLS configuration",
        ),
    ];
    for (config, expected) in &cases {
        let (status, stderr) = lbd_refuses(&ns, config);
        assert_eq!(status.code(), Some(1), "{expected}: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected «{expected}» in: {stderr}"
        );
        // Refused before the data plane: nothing pinned, nothing attached.
        assert!(!Path::new(&pin).exists(), "{pin} was created");
        let link = ns.ip(&["-d", "link", "show", "eth0"]).expect("link");
        assert!(!link.contains("xdp"), "XDP attached: {link}");
        eprintln!("refused: {}", stderr.lines().last().unwrap_or_default());
    }

    // Loopback without TLS stays allowed (documented): lbd starts and answers there.
    let config = format!("{base}\n[api]\ngrpc_listen = \"127.0.0.1:{PORT}\"\n");
    let lbd = Lbd::start(&ns, &config).expect("loopback listener without TLS");
    let (ok, out) = lbctl_in(
        &ns,
        &["--addr", &format!("http://127.0.0.1:{PORT}"), "vip", "list"],
    );
    assert!(ok, "loopback TCP: {out}");
    drop(lbd);
}
