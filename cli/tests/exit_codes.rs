//! Black-box checks of the `lbctl` binary's process contract: exit codes and the single
//! `lbctl: ...` line on stderr (usage errors 2, lbd unreachable or RPC failures 1).

use std::process::{Command, Output};

fn lbctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(args)
        .env_remove("LBCTL_SOCKET")
        .env_remove("LBCTL_ADDR")
        .output()
        .expect("run lbctl")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_values_exit_2_with_one_line() {
    for (args, want) in [
        (
            &["backend", "list", "--vip", "10.0.0.1", "--proto", "tcp"][..],
            "lbctl: invalid --vip '10.0.0.1': expected ADDR:PORT\n",
        ),
        (
            &["vip", "add", "10.0.0.1:80", "--proto", "sctp"][..],
            "lbctl: invalid --proto 'sctp': expected tcp or udp\n",
        ),
        (
            &[
                "add-backend",
                "--vip",
                "10.0.0.1:80",
                "--proto",
                "tcp",
                "10.0.2.1:80",
                "--weight",
                "-1",
            ][..],
            "lbctl: invalid --weight '-1': expected an integer in 0..4294967295\n",
        ),
    ] {
        // Points at a socket that cannot exist: validation must fail before any connect.
        let mut full = vec!["--socket", "/nonexistent/lbd.sock"];
        full.extend_from_slice(args);
        let out = lbctl(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&out), want, "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn clap_usage_errors_exit_2() {
    let out = lbctl(&["vip", "add", "10.0.0.1:80"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--proto"), "{}", stderr(&out));
    assert_eq!(lbctl(&["--help"]).status.code(), Some(0));
}

#[test]
fn missing_socket_exits_1_with_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("lbd.sock");
    let sock = sock.to_str().expect("utf-8 temp path");
    let out = lbctl(&["--socket", sock, "vip", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "lbctl: cannot connect to lbd at {sock}: No such file or directory (is lbd running?)\n"
        )
    );
}

#[test]
fn silent_lbd_hits_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("lbd.sock");
    // Listens but never accepts: the connect succeeds, the request never gets a reply.
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let sock = sock.to_str().expect("utf-8 temp path");
    let started = std::time::Instant::now();
    let out = lbctl(&["--socket", sock, "--timeout", "300ms", "stats"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("lbctl: ") && err.lines().count() == 1 && err.contains("300ms"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[test]
fn completions_need_no_lbd() {
    let out = lbctl(&["--socket", "/nonexistent/lbd.sock", "completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("lbctl"));
}

#[test]
fn man_needs_no_lbd() {
    let out = lbctl(&["--socket", "/nonexistent/lbd.sock", "man"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH lbctl 1"));

    let dir = tempfile::tempdir().expect("tempdir");
    let out = lbctl(&["man", "--dir", &dir.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let page = dir.path().join("lbctl-backend-drain.1");
    assert!(listed.contains(&page.display().to_string()), "{listed}");
    let roff = std::fs::read_to_string(&page).expect("lbctl-backend-drain.1 written");
    assert!(roff.contains(".TH lbctl-backend-drain 1"), "{roff}");
}

/// `lbctl backend-setup` runs `xdplb-backend-setup` (here a stand-in script next to a copy of
/// lbctl): the flags go through, its output and exit status are lbctl's.
#[test]
fn backend_setup_runs_the_binary_next_to_lbctl() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("lbctl");
    std::fs::copy(env!("CARGO_BIN_EXE_lbctl"), &copy).expect("copy lbctl");
    let fake = dir.path().join("xdplb-backend-setup");
    std::fs::write(&fake, "#!/bin/sh\necho \"$*\"\necho oops >&2\nexit 7\n").expect("script");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let run = |path: &str| {
        // A file just written can be busy for a moment: another test thread that forks while
        // the write is open holds the descriptor until its child execs (ETXTBSY). Bounded retry.
        let mut tries = 0;
        loop {
            let out = Command::new(&copy)
                .args([
                    "--json",
                    "backend-setup",
                    "--vip",
                    "10.0.0.10",
                    "--mode",
                    "IPIP",
                ])
                .args(["--dev", "eth0", "--lb-source", "10.0.1.1", "--undo"])
                .env("PATH", path)
                .output();
            match out {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                out => break out.expect("run lbctl"),
            }
        }
    };
    let out = run("/nonexistent");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "--vip 10.0.0.10 --mode ipip --dev eth0 --lb-source 10.0.1.1/32 --undo --json\n"
    );
    assert_eq!(stderr(&out), "oops\n");

    // Missing: one line naming the binary, exit 1.
    std::fs::remove_file(&fake).expect("rm");
    let out = run("/nonexistent");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "lbctl: backend-setup runs xdplb-backend-setup, which is neither next to lbctl"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // Bad values are still refused by lbctl itself, before anything runs.
    let out = lbctl(&[
        "backend-setup",
        "--vip",
        "10.0.0.10",
        "--mode",
        "nat",
        "--dev",
        "eth0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        stderr(&out),
        "lbctl: invalid --mode 'nat': expected l2dsr or ipip (a NAT backend needs no preparation)\n"
    );
    // ipip without --lb-source would take IPIP from anyone: refused, naming the flag.
    let out = lbctl(&[
        "backend-setup",
        "--vip",
        "10.0.0.10",
        "--mode",
        "ipip",
        "--dev",
        "eth0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out)
            .starts_with("lbctl: invalid --lb-source '': expected at least one with --mode ipip"),
        "{}",
        stderr(&out)
    );
}
