use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixListener;

fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lb-bird-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn render_routes_exact() {
    let text = render_routes(&set(&[
        "2001:db8:100::10",
        "192.0.2.10",
        "198.51.100.7",
        "2001:db8::1",
    ]));
    let want = "# written by the lb agent; do not edit
# BIRD includes this file from bird.conf; the agent rewrites it and runs `configure`
# whenever the set of announced VIPs changes. Export these protocols to BGP with
# `export where proto = \"lb_vips4\";` and `export where proto = \"lb_vips6\";`.

protocol static lb_vips4 {
\tipv4;
\troute 192.0.2.10/32 blackhole;
\troute 198.51.100.7/32 blackhole;
}

protocol static lb_vips6 {
\tipv6;
\troute 2001:db8::1/128 blackhole;
\troute 2001:db8:100::10/128 blackhole;
}
";
    assert_eq!(text, want);
}

#[test]
fn render_routes_empty_keeps_both_protocols() {
    let text = initial_routes();
    assert!(text.starts_with(ROUTES_HEADER));
    assert!(text.contains("protocol static lb_vips4 {\n\tipv4;\n}\n"));
    assert!(text.contains("protocol static lb_vips6 {\n\tipv6;\n}\n"));
    assert!(!text.contains("route "));
}

#[test]
fn routes_file_written_atomically_and_only_on_change() {
    let dir = TempDir::new();
    let path = dir.0.join("lb-vips.conf");
    assert!(write_initial_routes(&path).unwrap());
    assert!(!write_initial_routes(&path).unwrap(), "kept when present");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), initial_routes());
    let content = render_routes(&set(&["192.0.2.10"]));
    assert!(write_routes_file(&path, &content).unwrap());
    assert!(!write_routes_file(&path, &content).unwrap(), "unchanged");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("lb-vips.conf")]);
    let err = write_routes_file(&dir.0.join("missing/x.conf"), &content).unwrap_err();
    assert!(format!("{err:#}").contains("missing/x.conf"), "{err:#}");
}

#[test]
fn parses_multi_line_reply_with_continuations() {
    let r = parse_reply(
        "2002-Name       Proto      Table      State  Since         Info\n\
         1002-device1    Device     ---        up     10:46:46.029  \n \
         lb_vips4   Static     master4    up     10:46:46.029  \n \
         bgp1       BGP        ---        start  10:46:47.100  Active        Socket: Connection refused\n\
         1002-bgp2       BGP        ---        up     2024-01-02 10:00:00  Established   \n\
         0000 \n",
    )
    .unwrap();
    assert_eq!(r.code(), 0);
    assert!(!r.is_error());
    assert_eq!(r.lines.len(), 6);
    assert_eq!(r.lines[2].code, 1002, "continuation keeps the code");
    assert!(r.lines[2].text.starts_with("lb_vips4 "));
    let p = parse_protocols(&r);
    assert_eq!(p.len(), 4);
    assert_eq!(p[0].name, "device1");
    assert_eq!(p[0].proto, "Device");
    assert_eq!(p[0].info, "");
    assert_eq!(p[1].table, "master4");
    assert_eq!(p[1].bgp_state(), None);
    assert_eq!(p[2].state, "start");
    assert_eq!(p[2].since, "10:46:47.100");
    assert_eq!(p[2].bgp_state(), Some("Active"));
    assert_eq!(p[2].info, "Active        Socket: Connection refused");
    assert!(!p[2].established());
    assert_eq!(p[3].since, "2024-01-02 10:00:00");
    assert!(p[3].established());
}

#[test]
fn parses_errors_and_spontaneous_lines() {
    let r = parse_reply(
        "0002-Reading configuration from /etc/bird/bird.conf\n\
         +Config timeout expired, starting undo\n\
         8002 /etc/bird/lb-vips.conf, line 3: syntax error, unexpected CF_SYM_UNDEFINED\n",
    )
    .unwrap();
    assert_eq!(r.code(), 8002);
    assert!(r.is_error());
    assert_eq!(
        r.message(),
        "/etc/bird/lb-vips.conf, line 3: syntax error, unexpected CF_SYM_UNDEFINED"
    );
    assert_eq!(r.spontaneous, vec!["Config timeout expired, starting undo"]);
    let r = parse_reply("9001 syntax error, unexpected CF_SYM_UNDEFINED\n").unwrap();
    assert_eq!(r.code(), 9001);
    let r = parse_reply("0000\n").unwrap();
    assert_eq!((r.code(), r.message().as_str()), (0, ""));
    let r = parse_reply("0002-Reading configuration from x\r\n0003 Reconfigured\r\n").unwrap();
    assert_eq!(r.code(), 3);
    assert_eq!(r.message(), "Reconfigured");
    assert!(configure_succeeded(r.code()));
    for bad in [
        "garbage\n",
        " continuation first\n",
        "12 short\n",
        "0003xReconfigured\n",
        "0002-Reading configuration\n",
        "",
        "0003 Reconfigured\n0000 \n",
    ] {
        assert!(parse_reply(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn success_codes() {
    for c in [3, 4, 5, 17, 18, 19, 20] {
        assert!(configure_succeeded(c), "{c}");
    }
    for c in [0, 1, 2, 6, 16, 1002, 8002, 9001] {
        assert!(!configure_succeeded(c), "{c}");
    }
}

#[test]
fn parses_host_routes() {
    let r = parse_reply(
        "0002-\n1007-Table master4:\n \
         192.0.2.10/32        blackhole [lb_vips4 11:00:00.000] * (200)\n \
         198.51.100.0/24      unicast [bgp1 11:00:00.000] * (100) [AS65000i]\n\
         1007-2001:db8:100::10/128 blackhole [lb_vips6 11:00:00.000] * (200)\n\
         0000 \n",
    )
    .unwrap();
    assert_eq!(
        parse_host_routes(&r),
        set(&["192.0.2.10", "2001:db8:100::10"])
    );
}

#[derive(Clone, Copy)]
enum Script {
    /// Greets, then answers every command with this text.
    Answer(&'static str),
    /// Greets, reads the command, never answers.
    Silent,
    /// Never greets.
    Mute,
    /// Greets, reads the command, sends this and closes.
    CloseAfter(&'static str),
    /// Greets, then streams table rows forever.
    Flood,
}

/// A fake BIRD on a unix socket: serves every connection with `script`; records the
/// commands it received and counts connections.
struct FakeBird {
    dir: TempDir,
    socket: PathBuf,
    commands: Arc<Mutex<Vec<String>>>,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeBird {
    fn start(script: Script) -> Self {
        let dir = TempDir::new();
        let socket = dir.0.join("bird.ctl");
        let listener = UnixListener::bind(&socket).unwrap();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let (c, s) = (commands.clone(), script.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let script = *s.lock().unwrap();
                tokio::spawn(serve(stream, script, c.clone()));
            }
        });
        Self {
            dir,
            socket,
            commands,
            script,
            task,
        }
    }

    fn bird(&self) -> Bird {
        Bird::new(&self.socket, self.dir.0.join("lb-vips.conf"))
            .with_timeout(Duration::from_millis(500))
    }

    fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    fn set_script(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }
}

impl Drop for FakeBird {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: UnixStream, script: Script, commands: Arc<Mutex<Vec<String>>>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    if matches!(script, Script::Mute) {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return;
    }
    if wr.write_all(b"0001 BIRD 2.0.12 ready.\n").await.is_err() {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        commands.lock().unwrap().push(line.trim_end().to_string());
        match script {
            Script::Answer(text) => {
                if wr.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
            Script::Silent | Script::Mute => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            Script::CloseAfter(text) => {
                let _ = wr.write_all(text.as_bytes()).await;
                return;
            }
            Script::Flood => {
                let row = format!("1007-192.0.2.10/32 blackhole {}\n", "x".repeat(200));
                for _ in 0..100_000 {
                    if wr.write_all(row.as_bytes()).await.is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

const RECONFIGURED: &str =
    "0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n";

fn bird_error(err: &anyhow::Error) -> &BirdError {
    err.downcast_ref::<BirdError>()
        .unwrap_or_else(|| panic!("not a BirdError: {err:#}"))
}

#[tokio::test]
async fn fake_bird_announce_success() {
    let fake = FakeBird::start(Script::Answer(RECONFIGURED));
    let bird = fake.bird();
    let vips = set(&["192.0.2.10", "2001:db8:100::10"]);
    let reply = bird.announce(&vips).await.unwrap();
    assert_eq!(reply.code(), 3);
    assert_eq!(reply.message(), "Reconfigured");
    assert_eq!(
        std::fs::read_to_string(bird.routes_file()).unwrap(),
        render_routes(&vips)
    );
    assert_eq!(fake.commands(), vec!["configure"]);
    // announce always configures; sync only when something changed.
    bird.announce(&vips).await.unwrap();
    assert_eq!(fake.commands().len(), 2);
    assert!(bird.sync(&vips).await.unwrap().is_none());
    assert_eq!(fake.commands().len(), 2);
    let fewer = set(&["192.0.2.10"]);
    assert_eq!(bird.sync(&fewer).await.unwrap().unwrap().code(), 3);
    assert_eq!(fake.commands().len(), 3);
    assert_eq!(
        std::fs::read_to_string(bird.routes_file()).unwrap(),
        render_routes(&fewer)
    );
    // A new handle does not know what BIRD took: its first sync configures.
    let again = fake.bird();
    assert!(again.sync(&fewer).await.unwrap().is_some());
    assert_eq!(fake.commands().len(), 4);
}

#[tokio::test]
async fn fake_bird_other_success_codes_and_commands() {
    let fake = FakeBird::start(Script::Answer(
        "0002-Reading configuration from /etc/bird/bird.conf\n0004 Reconfiguration in progress\n",
    ));
    assert_eq!(fake.bird().configure().await.unwrap().code(), 4);
    fake.set_script(Script::Answer(
        "2002-Name       Proto      Table      State  Since         Info\n\
         1002-lb_vips4   Static     master4    up     10:46:46.029  \n \
         router4    BGP        ---        up     10:46:47.000  Established   \n0000 \n",
    ));
    let p = fake.bird().protocols().await.unwrap();
    assert_eq!(p.len(), 2);
    assert!(p[1].established());
    assert_eq!(fake.commands(), vec!["configure", "show protocols"]);
    fake.set_script(Script::Answer(
        "9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
    ));
    let err = fake.bird().command("shwo protocols").await.unwrap_err();
    assert!(matches!(
        bird_error(&err),
        BirdError::Rejected { code: 9001, .. }
    ));
    let err = fake.bird().command("show\nprotocols").await.unwrap_err();
    assert!(format!("{err}").contains("one line"), "{err}");
}

#[tokio::test]
async fn fake_bird_config_error() {
    let fake = FakeBird::start(Script::Answer(
        "0002-Reading configuration from /etc/bird/bird.conf\n\
         8002 /etc/bird/lb-vips.conf:7:2 syntax error, unexpected CF_SYM_UNDEFINED\n",
    ));
    let bird = fake.bird();
    let vips = set(&["192.0.2.10"]);
    let err = bird.announce(&vips).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("BIRD refused `configure` (8002)")
            && msg.contains("lb-vips.conf:7:2 syntax error"),
        "{msg}"
    );
    assert!(matches!(
        bird_error(&err),
        BirdError::Rejected { code: 8002, .. }
    ));
    // The file is written; a later sync retries because BIRD never took it.
    fake.set_script(Script::Answer(RECONFIGURED));
    assert!(bird.sync(&vips).await.unwrap().is_some());
    assert!(bird.sync(&vips).await.unwrap().is_none());
    // 0006 (shutting down) is not success either.
    fake.set_script(Script::Answer(
        "0002-Reading configuration from x\n0006 Reconfiguration ignored, shutting down\n",
    ));
    let err = bird.configure().await.unwrap_err();
    assert!(matches!(
        bird_error(&err),
        BirdError::Rejected { code: 6, .. }
    ));
}

#[tokio::test]
async fn fake_bird_never_answers() {
    for script in [Script::Silent, Script::Mute] {
        let fake = FakeBird::start(script);
        let bird = fake.bird().with_timeout(Duration::from_millis(200));
        let t = std::time::Instant::now();
        let err = bird.configure().await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(matches!(bird_error(&err), BirdError::Timeout { .. }));
        assert!(
            format!("{err}").contains("did not answer `configure` within 200ms"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn fake_bird_closes_mid_reply() {
    let fake = FakeBird::start(Script::CloseAfter(
        "0002-Reading configuration from /etc/bird/bird.conf\n000",
    ));
    let err = fake.bird().configure().await.unwrap_err();
    assert!(
        format!("{err}").contains("closed the connection in the middle of a reply"),
        "{err}"
    );
    fake.set_script(Script::CloseAfter(""));
    let err = fake.bird().configure().await.unwrap_err();
    assert!(
        format!("{err}").contains("closed the connection without answering"),
        "{err}"
    );
    fake.set_script(Script::CloseAfter("HTTP/1.1 400 Bad Request\n"));
    let err = fake.bird().configure().await.unwrap_err();
    assert!(format!("{err}").contains("not a BIRD reply line"), "{err}");
}

#[tokio::test]
async fn fake_bird_reply_too_long() {
    let fake = FakeBird::start(Script::Flood);
    let bird = fake.bird().with_max_reply(64 << 10);
    let err = bird.command("show route").await.unwrap_err();
    assert!(
        matches!(bird_error(&err), BirdError::TooLong { .. }),
        "{err}"
    );
    assert!(format!("{err}").contains("exceeds 65536 bytes"), "{err}");
}

#[tokio::test]
async fn unreachable_socket_errors() {
    let dir = TempDir::new();
    let missing = Bird::new(dir.0.join("bird.ctl"), dir.0.join("lb-vips.conf"));
    let err = missing.configure().await.unwrap_err();
    let msg = format!("{err}");
    assert!(
        msg.contains("is BIRD running?") && msg.contains("bird.ctl"),
        "{msg}"
    );
    // A stale socket file nobody listens on.
    let stale = dir.0.join("stale.ctl");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let err = Bird::new(&stale, dir.0.join("lb-vips.conf"))
        .configure()
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("nothing listens"), "{err}");
    // announce still leaves the file written for BIRD's next start.
    let vips = set(&["192.0.2.10"]);
    assert!(missing.announce(&vips).await.is_err());
    assert_eq!(
        std::fs::read_to_string(missing.routes_file()).unwrap(),
        render_routes(&vips)
    );
}
