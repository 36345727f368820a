//! An active-passive pair under keepalived (Debian's package), in network namespaces this test
//! builds: two lb nodes and a client on a bridge, a virtual IP that keepalived moves. Both lbs bind
//! the virtual IP with `freebind`, keepalived's check script asks each lb's `/readyz`, and the test
//! kills the active lb while a client loops on the virtual IP: the backup takes over, and the figures
//! (time to failover, failed requests) are printed. Needs root (namespaces); skipped with a message
//! where they are not permitted, and required in CI (`LB_REQUIRE_HA`).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIP: &str = "10.99.0.100";

fn required() -> bool {
    std::env::var_os("LB_REQUIRE_HA").is_some()
}

fn skip(why: &str) {
    assert!(!required(), "high-availability test required but {why}");
    eprintln!("skipped: {why}");
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The namespaces (deleted on drop, which deletes their links and the bridge too) and processes.
struct Lab {
    namespaces: Vec<String>,
    children: Mutex<Vec<Child>>,
    keepalived: Mutex<Vec<Child>>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // keepalived stops its VRRP and checker processes on SIGTERM (not on SIGKILL).
        for c in self.keepalived.lock().unwrap().iter_mut() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for file in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with("keepalived-") && name.ends_with(".pid") {
                let pid =
                    std::fs::read_to_string(file.path()).ok().and_then(|p| p.trim().parse::<i32>().ok());
                // Only a keepalived of this lab still running: a pid that ended may be another
                // process's (or thread's) now.
                let Some(pid) = pid else { continue };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&*self.dir.path().to_string_lossy()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        for c in self.children.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Lab {
    /// Builds namespaces `a`, `b` (the lb nodes: 10.99.0.1 and .2) and `c` (the client: .10), each
    /// with `eth0` on a bridge in a fourth namespace.
    fn build() -> Result<Self, String> {
        let tag = format!("{:x}", std::process::id() & 0xffff);
        let name = |n: &str| format!("lbha-{n}-{tag}");
        let mut lab = Lab {
            namespaces: Vec::new(),
            children: Mutex::new(Vec::new()),
            keepalived: Mutex::new(Vec::new()),
            dir: tempfile::tempdir().unwrap(),
        };
        for n in ["sw", "a", "b", "c"] {
            ip(&["netns", "add", &name(n)])?;
            lab.namespaces.push(name(n));
        }
        let sw = name("sw");
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (n, addr) in [("a", "10.99.0.1/24"), ("b", "10.99.0.2/24"), ("c", "10.99.0.10/24")] {
            let (inner, outer) = (format!("v{n}{tag}"), format!("p{n}{tag}"));
            ip(&["link", "add", &inner, "type", "veth", "peer", "name", &outer])?;
            ip(&["link", "set", &inner, "netns", &name(n)])?;
            ip(&["link", "set", &outer, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &outer, "master", "br0", "up"])?;
            ip(&["-n", &name(n), "link", "set", "lo", "up"])?;
            ip(&["-n", &name(n), "link", "set", &inner, "name", "eth0"])?;
            ip(&["-n", &name(n), "addr", "add", addr, "dev", "eth0"])?;
            ip(&["-n", &name(n), "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    fn ns(&self, n: &str) -> &str {
        let i = ["sw", "a", "b", "c"].iter().position(|x| *x == n).unwrap();
        &self.namespaces[i]
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Starts lb on node `n`; returns once it listens.
    fn start_lb(&self, n: &str) -> usize {
        let config = self.path(&format!("lb-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[listeners]]\naddr = \"{VIP}:8080\"\nfreebind = true\n[pools.web]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n\
                 [[routes]]\nredirect = {{ to = \"/served-by-{n}\", keep_path = false, keep_query = false }}\n\
                 [admin]\naddr = \"127.0.0.1:9901\"\n[reload]\nwatch = false\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns(n), env!("CARGO_BIN_EXE_lb"), "--config"])
            .arg(&config)
            .env("LB_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("lb listening on"), "{line:?}");
        let mut children = self.children.lock().unwrap();
        children.push(child);
        children.len() - 1
    }

    fn kill(&self, index: usize) {
        let mut children = self.children.lock().unwrap();
        let _ = children[index].kill();
        let _ = children[index].wait();
    }

    /// Starts keepalived on node `n` with `priority`, its check asking lb's `/readyz`.
    fn start_keepalived(&self, n: &str, priority: u32) -> Result<(), String> {
        let conf = self.path(&format!("keepalived-{n}.conf"));
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  enable_script_security\n  script_user root\n}}\n\
                 vrrp_script lb_ready {{\n  script \"/usr/bin/curl -sf -m 1 -o /dev/null http://127.0.0.1:9901/readyz\"\n  \
                 interval 1\n  timeout 1\n  fall 1\n  rise 1\n}}\n\
                 vrrp_instance lb {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n  \
                 priority {priority}\n  advert_int 1\n  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n  \
                 track_script {{\n    lb_ready\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let pid = |kind: &str| self.path(&format!("keepalived-{n}-{kind}.pid"));
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns(n), "keepalived", "--dont-fork", "--no-syslog", "--use-file"])
            .arg(&conf)
            .arg("--pid")
            .arg(pid("main"))
            .arg("--vrrp_pid")
            .arg(pid("vrrp"))
            .arg("--checkers_pid")
            .arg(pid("checkers"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("keepalived: {e}"))?;
        self.keepalived.lock().unwrap().push(child);
        Ok(())
    }

    /// One request from the client node to the virtual IP: the node that answered, or `None`.
    fn request(&self) -> Option<char> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns("c"),
                "curl",
                "-s",
                "-m",
                "1",
                "-o",
                "/dev/null",
                "-w",
                "%{redirect_url}",
            ])
            .arg(format!("http://{VIP}:8080/"))
            .output()
            .ok()?;
        let url = String::from_utf8_lossy(&out.stdout).into_owned();
        url.rsplit("/served-by-")
            .next()
            .filter(|_| url.contains("/served-by-"))
            .and_then(|n| n.chars().next())
    }
}

/// What the client saw, in order: when, and which node answered (`None`: failed).
type Seen = Arc<Mutex<Vec<(Instant, Option<char>)>>>;

fn wait_for(
    seen: &Seen,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&[(Instant, Option<char>)]) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done(&seen.lock().unwrap()) {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}: {:?}", tail(seen));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(seen: &Seen) -> Vec<Option<char>> {
    let s = seen.lock().unwrap();
    s.iter().rev().take(20).map(|(_, n)| *n).collect()
}

fn count(seen: &[(Instant, Option<char>)], since: usize, node: char) -> usize {
    seen[since..].iter().filter(|(_, n)| *n == Some(node)).count()
}

#[test]
fn the_backup_takes_the_virtual_ip_when_the_active_lb_dies() {
    if !nix::unistd::geteuid().is_root() {
        return skip("network namespaces need root");
    }
    if Command::new("keepalived").arg("--version").output().is_err() {
        return skip("keepalived is not installed (apt-get install keepalived)");
    }
    let lab = match Lab::build() {
        Ok(lab) => lab,
        Err(e) => return skip(&format!("network namespaces are not permitted here: {e}")),
    };
    let lb_a = lab.start_lb("a");
    lab.start_lb("b");
    lab.start_keepalived("a", 150).unwrap();
    lab.start_keepalived("b", 100).unwrap();

    // The client loops on the virtual IP from its own namespace.
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let looping = std::thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let answer = lab.request();
                seen.lock().unwrap().push((Instant::now(), answer));
                if answer.is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        // The higher priority takes the virtual IP once keepalived elected it.
        wait_for(&seen, Duration::from_secs(30), "node a serves the virtual IP", |s| count(s, 0, 'a') >= 20);
        let before = seen.lock().unwrap().len();
        let killed = Instant::now();
        lab.kill(lb_a);
        wait_for(&seen, Duration::from_secs(30), "node b takes over", |s| count(s, before, 'b') >= 1);
        let (failover, failed) = {
            let s = seen.lock().unwrap();
            let first_b = s[before..].iter().find(|(_, n)| *n == Some('b')).map(|(t, _)| *t).unwrap();
            let failed =
                s[before..].iter().take_while(|(_, n)| *n != Some('b')).filter(|(_, n)| n.is_none()).count();
            (first_b - killed, failed)
        };
        wait_for(&seen, Duration::from_secs(30), "node b serves", |s| count(s, before, 'b') >= 20);
        // Node a comes back as the backup (nopreempt): traffic stays on b, without a failure.
        let back = seen.lock().unwrap().len();
        lab.start_lb("a");
        wait_for(&seen, Duration::from_secs(30), "traffic goes on", |s| count(s, back, 'b') >= 40);
        stop.store(true, Ordering::SeqCst);
        let s = seen.lock().unwrap();
        let after_failover = s[back..].iter().filter(|(_, n)| n.is_none()).count();
        (failover, failed, after_failover)
    });
    let (failover, failed, after) = looping;
    eprintln!("failover: {failover:?} after the active lb was killed; {failed} failed requests meanwhile; {after} after node a came back");
    assert!(failover < Duration::from_secs(15), "{failover:?}");
    assert_eq!(after, 0, "node a coming back as the backup fails nothing");
}
