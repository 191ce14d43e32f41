//! `lb-sync-bench`, run by `cargo xtask bench --sync` (root): what peer flow sync costs, per
//! 10,000 new flows per second.
//!
//! It brings up the anycast lab (prefix `lbsb`, release agents), then for each rate sends raw
//! TCP SYNs, each a new flow, from the router's `lb1` veth straight to lb1's eth0 (no ECMP),
//! at a paced rate for a fixed time. lb1's XDP program creates an entry for each and exports it
//! on its ring buffer; lb1's agent sends the flows to lb2, whose agent installs them. Per rate it
//! measures, from quiet to quiet: the frames sent, the SYNs lb1 counted, flow events (and lost
//! ones), flows exported by lb1 and imported by lb2 (and drops), the bytes on lb1's link to lb2
//! (as lb2 counts each message, framing included; lb1's lb_sync_bytes_sent_total as a
//! cross-check; and the sync interfaces' bytes on the wire), and both agents' CPU time
//! (utime + stime), with the idle agents' CPU and link bytes subtracted.
//!
//! The agents also re-send their recent flows every `refresh_secs` (set to 30 s here), scanning their whole
//! connection table. So the new-flow path is measured alone, each rate's window is placed
//! between two refreshes (their phase is found first with a few marker flows), and the
//! refreshes themselves are measured between windows and reported apart.
//!
//! Sources are 203.0.113.192/26 (documentation, unused by the lab) with varying ports; the
//! backends' SYN-ACKs towards them die in a blackhole route the bench adds in the router, so no
//! packet leaves the lab's namespaces. The lab is torn down at the end, on error and on Ctrl-C.
//!
//! With `--modes` it instead compares the `[sync] flows` modes (all, changes, off): see
//! `modes`.
//!
//! usage: lb-sync-bench [--rates 2000,5000,10000,20000] [--secs 10] [--json] [--modes] | --down

use anyhow::Result;
use lb_lab::Lab;

mod measure;
mod modes;
mod params;
mod port;
mod readings;
mod report;
mod row;
mod steps;
mod window;

use measure::run;
use params::{options, parse_args};
use steps::on_signal;

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lb-sync-bench: {e:#}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lb-sync-bench: run as root (it creates namespaces and loads XDP programs)");
        std::process::exit(1);
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let result = if args.down {
        down()
    } else if args.modes {
        modes::run_modes(&args)
    } else {
        run(&args)
    };
    if let Err(e) = result {
        eprintln!("lb-sync-bench: {e:#}");
        std::process::exit(1);
    }
}

fn down() -> Result<()> {
    let lab = Lab {
        opts: options()?,
        owned: false,
    };
    let c = lab.down();
    eprintln!(
        "removed: {} processes, {} namespaces{}",
        c.processes,
        c.namespaces,
        if c.leftovers.is_empty() {
            String::new()
        } else {
            format!("; left: {:?}", c.leftovers)
        }
    );
    Ok(())
}
