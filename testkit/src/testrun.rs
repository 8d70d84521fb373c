//! BPF_PROG_TEST_RUN of an XDP program: a frame in, the verdict, the frame the program left and
//! the kernel's timing out. One wrapper for the tests ([`run_xdp`]) and the bench ([`Runner`],
//! which reuses its output buffer and repeats a frame).

use std::time::Duration;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::ProgramMut;

/// Room the program may grow a frame by (bpf_xdp_adjust_head for an encapsulation).
pub const HEADROOM: usize = 256;

/// One test run: the program's verdict, the frame it left, and the mean time of one run as the
/// kernel measured it (around the program alone).
#[derive(Debug, Clone)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    pub duration: Duration,
}

/// One BPF_PROG_TEST_RUN of an XDP program: `frame` as if received on `ifindex` (0: no
/// interface; else an interface of the calling thread's namespace), with room for the program
/// to grow the frame by up to [`HEADROOM`] bytes.
pub fn run_xdp(prog: &ProgramMut<'_>, ifindex: u32, frame: &[u8]) -> Result<Run> {
    Runner::default().run_frame(prog, ifindex, frame, 1)
}

/// Test runs with a reusable output buffer (frames up to 2 KiB plus [`HEADROOM`]).
#[derive(Debug)]
pub struct Runner {
    out: Vec<u8>,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            out: vec![0u8; 4096],
        }
    }
}

impl Runner {
    /// One run of `frame` received on `ifindex`: (verdict, kernel-timed ns); the output frame
    /// is not copied out.
    pub fn run(&mut self, prog: &ProgramMut<'_>, ifindex: u32, frame: &[u8]) -> Result<(u32, u64)> {
        let (action, _, duration) = self.test_run(prog, ifindex, frame, 1)?;
        Ok((action, duration.as_nanos() as u64))
    }

    /// One run, returning the verdict and the frame the program left (to learn e.g. an SNAT
    /// port).
    pub fn run_out(
        &mut self,
        prog: &ProgramMut<'_>,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>)> {
        let run = self.run_frame(prog, ifindex, frame, 1)?;
        Ok((run.action, run.out))
    }

    /// `repeat` runs of `frame` in one call (the kernel runs the program again on the frame it
    /// left, so only for verdicts that leave it untouched); the duration is their mean.
    pub fn run_frame(
        &mut self,
        prog: &ProgramMut<'_>,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<Run> {
        let (action, len, duration) = self.test_run(prog, ifindex, frame, repeat)?;
        Ok(Run {
            action,
            out: self.out[..len].to_vec(),
            duration,
        })
    }

    fn test_run(
        &mut self,
        prog: &ProgramMut<'_>,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, usize, Duration)> {
        if self.out.len() < frame.len() + HEADROOM {
            self.out.resize(frame.len() + HEADROOM, 0);
        }
        test_run(prog.as_fd(), ifindex, frame, Some(&mut self.out), repeat)
    }
}

/// `repeat` runs of `frame` on a program given by its file descriptor (from any thread: a
/// [`ProgramMut`] cannot leave its object's), without copying the frame out; the verdict.
pub fn run_xdp_fd(prog: BorrowedFd<'_>, ifindex: u32, frame: &[u8], repeat: u32) -> Result<u32> {
    let (action, _, _) = test_run(prog, ifindex, frame, None, repeat)?;
    Ok(action)
}

/// The one BPF_PROG_TEST_RUN of the kit: `frame` as if received on `ifindex`, the frame the
/// program left copied into `out` when given; (verdict, its length, mean kernel-timed run).
fn test_run(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    frame: &[u8],
    out: Option<&mut [u8]>,
    repeat: u32,
) -> Result<(u32, usize, Duration)> {
    let mut ctx = libbpf_sys::xdp_md {
        data: 0,
        data_end: frame.len() as u32,
        data_meta: 0,
        ingress_ifindex: ifindex,
        rx_queue_index: 0,
        egress_ifindex: 0,
    };
    let (data_out, data_size_out) = match out {
        Some(o) => (o.as_mut_ptr().cast(), o.len() as u32),
        None => (std::ptr::null_mut(), 0),
    };
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: frame.as_ptr().cast(),
        data_size_in: frame.len() as u32,
        data_out,
        data_size_out,
        ctx_in: (&mut ctx as *mut libbpf_sys::xdp_md).cast(),
        ctx_size_in: std::mem::size_of::<libbpf_sys::xdp_md>() as u32,
        repeat: repeat as i32,
        ..Default::default()
    };
    // SAFETY: every pointer in opts refers to a live buffer of the stated size (`frame`, `out`,
    // `ctx`), all of which outlive the call.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(-rc))
            .with_context(|| format!("BPF_PROG_TEST_RUN of a {}-byte frame", frame.len()));
    }
    Ok((
        opts.retval,
        opts.data_size_out as usize,
        Duration::from_nanos(u64::from(opts.duration)),
    ))
}
