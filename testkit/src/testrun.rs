//! BPF_PROG_TEST_RUN of an XDP program: a frame in, the verdict, the frame the program left and
//! the kernel's timing out. One wrapper for the tests ([`run_xdp`]) and the bench ([`Runner`],
//! which reuses its output buffer and repeats a frame).

use std::time::Duration;

use anyhow::{Context, Result};
use libbpf_rs::{ProgramInput, ProgramMut};

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
        let mut ctx = libbpf_sys::xdp_md {
            data: 0,
            data_end: frame.len() as u32,
            data_meta: 0,
            ingress_ifindex: ifindex,
            rx_queue_index: 0,
            egress_ifindex: 0,
        };
        // SAFETY: xdp_md is a repr(C) struct of six u32 (no padding); the slice covers exactly
        // it and lives no longer than `ctx`.
        let ctx_bytes = unsafe {
            std::slice::from_raw_parts_mut(
                (&mut ctx as *mut libbpf_sys::xdp_md).cast::<u8>(),
                std::mem::size_of::<libbpf_sys::xdp_md>(),
            )
        };
        let input = ProgramInput {
            data_in: Some(frame),
            data_out: Some(&mut self.out),
            context_in: Some(ctx_bytes),
            repeat,
            ..Default::default()
        };
        let output = prog
            .test_run(input)
            .with_context(|| format!("BPF_PROG_TEST_RUN of a {}-byte frame", frame.len()))?;
        let len = output
            .data
            .as_ref()
            .map(|d| d.len())
            .context("test run returned no data")?;
        Ok((output.return_value, len, output.duration))
    }
}
