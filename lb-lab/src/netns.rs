//! Network namespaces: create and delete them, run a thread or a process inside one.
//!
//! A process is started with only its *network* namespace switched (not `ip netns exec`,
//! which also switches the mount namespace and would hide bpffs pins from its successor).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iface`'s MAC in namespace `ns`.
pub fn mac(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = sh("ip", &["-n", ns, "-j", "link", "show", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    lb_userspace::config::parse_mac(v[0]["address"].as_str().context("no address")?)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        // A leftover of an interrupted run with the same name goes first.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        sh("ip", &["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    pub fn file(&self) -> Result<File> {
        File::open(format!("/run/netns/{}", self.name)).context("opening the netns")
    }

    /// Starts `cmd` inside this namespace (only its network namespace changes: the mount
    /// namespace stays, so its bpffs pins are where this process reads them).
    pub fn spawn(&self, cmd: &mut Command) -> Result<std::process::Child> {
        let ns_file = self.file()?;
        let raw = ns_file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; `ns_file` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?} in {}", cmd.get_program(), self.name))?;
        drop(ns_file);
        Ok(child)
    }

    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        mac(&self.name, iface)
    }

    /// The id of the XDP program attached to `iface`, if any.
    pub fn xdp_prog_id(&self, iface: &str) -> Result<Option<u64>> {
        let out = self.ip(&["-j", "link", "show", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0]["xdp"]["prog"]["id"].as_u64())
    }

    /// Runs `f` on a thread inside this namespace (sockets it makes stay in it).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        in_ns(&self.name, f)
    }

    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<()> {
        sysctl(&self.name, settings)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a thread inside namespace `ns` (sockets it makes stay in it).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    std::thread::spawn(move || {
        enter(&file).expect("setns");
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns {ns} panicked"))
}

/// Writes `net.x.y = v` settings under /proc/sys as seen from namespace `ns`.
pub fn sysctl(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    for (k, v) in settings {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        let v = v.to_string();
        in_ns(ns, move || std::fs::write(&path, v))?
            .with_context(|| format!("sysctl {k} in {ns}"))?;
    }
    Ok(())
}

/// Moves the calling thread into the namespace behind `file`.
pub fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
