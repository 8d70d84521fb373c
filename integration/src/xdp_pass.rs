//! A two-instruction XDP_PASS program, attached to the veth ends that face the LB.
//!
//! Why: when the LB's XDP program returns XDP_TX on a veth, the kernel queues the frame on the
//! peer's XDP ring but only schedules the peer's NAPI if the peer itself has an XDP program
//! (`veth_xdp_flush`); with GRO alone the frame waits until unrelated traffic wakes the peer
//! (seen: one-arm connections stalling for seconds). XDP_REDIRECT flushes either way. A pass
//! program on the peer makes both verdicts deliver at once and changes nothing else.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use crate::netns::{run_cmd, NetNs};
use crate::procs::ensure_bpffs;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// `r0 = XDP_PASS (2); exit`, as raw `struct bpf_insn`s (code, regs, off, imm little-endian).
const PASS_INSNS: [[u8; 8]; 2] = [
    [0xb7, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00], // BPF_ALU64 | BPF_MOV | BPF_K, r0 = 2
    [0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // BPF_JMP | BPF_EXIT
];

static PIN_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, zero-padded (the kernel requires unknown
/// trailing bytes to be zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    padding: [u64; 8],
}

/// The `BPF_OBJ_PIN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    padding: [u64; 2],
}

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` points to a live, initialised attribute struct of `size` bytes whose
    // pointer fields point to live buffers for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn load_pass_program() -> Result<OwnedFd> {
    let license = CString::new("GPL").context("license string")?;
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"xlb_pass");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: PASS_INSNS.len() as u32,
        insns: PASS_INSNS.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    let fd = bpf(
        BPF_PROG_LOAD,
        (&mut attr as *mut ProgLoadAttr).cast(),
        std::mem::size_of::<ProgLoadAttr>(),
    )
    .context("BPF_PROG_LOAD of the XDP_PASS program")?;
    let fd = i32::try_from(fd).context("program fd out of range")?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pin(fd: &OwnedFd, path: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let cpath = CString::new(path).context("pin path")?;
    let mut attr = ObjPinAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: u32::try_from(fd.as_raw_fd()).context("negative fd")?,
        ..Default::default()
    };
    bpf(
        BPF_OBJ_PIN,
        (&mut attr as *mut ObjPinAttr).cast(),
        std::mem::size_of::<ObjPinAttr>(),
    )
    .with_context(|| format!("BPF_OBJ_PIN at {path}"))?;
    Ok(())
}

/// Attaches an XDP_PASS program in native (driver) mode to `ifname` inside `ns`.
///
/// The program is pinned briefly so that `ip link set ... xdpdrv pinned` can attach it, then
/// unpinned: the attachment keeps it alive until the interface goes away with its namespace.
pub fn attach_xdp_pass(ns: &NetNs, ifname: &str) -> Result<()> {
    ensure_bpffs()?;
    let fd = load_pass_program()?;
    let n = PIN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = format!("/sys/fs/bpf/xlb-pass-{}-{n}", std::process::id());
    pin(&fd, &path)?;
    // nsenter, not `ip -n`: the latter remounts /sys and would not see the pin.
    let net = format!("--net={}", ns.path().display());
    let attached = run_cmd(&[
        "nsenter", &net, "ip", "link", "set", "dev", ifname, "xdpdrv", "pinned", &path,
    ]);
    let unpinned = std::fs::remove_file(&path);
    attached.with_context(|| format!("attaching XDP_PASS to {}:{ifname}", ns.name()))?;
    if let Err(e) = unpinned {
        bail!("removing the temporary pin {path}: {e}");
    }
    Ok(())
}
