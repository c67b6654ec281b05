//! Harness for the guest integration tests: boots the real image under QEMU
//! through `run-qemu.sh` and collects its serial console.
//!
//! Each [`Guest`] gets free host ports. QEMU runs in its own process group
//! under a small watchdog shell that kills the group when the test process
//! closes the watchdog's stdin (on drop, or when the test process dies), so no
//! QEMU outlives the tests.
//!
//! The platform is a parameter of the harness, not of the tests:
//! `VELLUM_PLATFORM=tcg` (the default: plain QEMU/TCG) or
//! `VELLUM_PLATFORM=snp-emulated` (the emulated SEV-SNP platform of
//! `snp-platform/`, `run-qemu.sh --snp-emulated`). Every guest boots on it;
//! tests that expect something platform-specific ask [`platform()`].

pub mod gdb;
pub mod http;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("itest lives in the workspace")
        .to_path_buf()
}

/// The image under test; panics with instructions when it is missing.
pub fn image() -> PathBuf {
    let p = root().join("target/vellum.bin");
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo run -p vellum-image -- build` (./test.sh does)",
        p.display()
    );
    p
}

/// `N` distinct free TCP ports on 127.0.0.1 (all held open until every one is
/// chosen, so the kernel cannot hand out one twice). Another process may still
/// take one before QEMU binds it: [`Guest::boot`] retries on that.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    core::array::from_fn(|i| held[i].local_addr().expect("local addr").port())
}

/// A private network namespace holding one tap device (`TapNs::TAP`, host
/// side 10.0.2.2/24), for a guest on the path the benchmarks use, where QEMU
/// offers checksum offload and TSO. Needs root and `/dev/net/tun`; removed on
/// drop (with everything in it).
#[derive(Debug)]
pub struct TapNs {
    /// Namespace name (per test process and instance).
    pub name: String,
}

impl TapNs {
    /// The tap device's name inside the namespace.
    pub const TAP: &'static str = "vtap0";
    /// The guest's address there (the static fallback; no DHCP server).
    pub const GUEST: &'static str = "10.0.2.15";

    /// Creates the namespace and the tap device; `Err` says why not (not
    /// root, no `ip`, no tun device, namespaces not allowed).
    pub fn create(tag: &str) -> Result<TapNs, String> {
        let ns = TapNs {
            name: format!("vellum-{tag}-{}", std::process::id()),
        };
        let steps: [&[&str]; 5] = [
            &["ip", "netns", "add", &ns.name],
            &[
                "ip",
                "-n",
                &ns.name,
                "tuntap",
                "add",
                "dev",
                Self::TAP,
                "mode",
                "tap",
            ],
            &[
                "ip",
                "-n",
                &ns.name,
                "addr",
                "add",
                "10.0.2.2/24",
                "dev",
                Self::TAP,
            ],
            &["ip", "-n", &ns.name, "link", "set", Self::TAP, "up"],
            &["ip", "-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new(step[0])
                .args(&step[1..])
                .output()
                .map_err(|e| format!("{}: {e}", step.join(" ")))?;
            if !out.status.success() {
                return Err(format!(
                    "{}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for TapNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The platform the guests run on (`VELLUM_PLATFORM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Plain QEMU/TCG with `-cpu max`: no SEV; `isa-debug-exit` stops QEMU.
    Tcg,
    /// The emulated SEV-SNP platform (`snp-platform/`): QEMU 10.0.2 with our
    /// patch, under TCG, launching the image as an SEV-SNP guest.
    SnpEmulated,
}

/// The platform of this test run, from `VELLUM_PLATFORM` (`tcg`, the default,
/// or `snp-emulated`). The first call under `snp-emulated` builds the
/// platform if needed (`snp-platform/build.sh`, about 3 minutes when fresh),
/// so that no guest's boot timeout includes the build; it panics with the
/// reason if that fails.
pub fn platform() -> Platform {
    state().0
}

/// The platform, and under `snp-emulated` its QEMU binary: built once and
/// used by every guest of this test process (`VELLUM_SNP_QEMU` for
/// `run-qemu.sh`), even if `snp-platform/` changes meanwhile.
fn state() -> &'static (Platform, Option<String>) {
    static STATE: OnceLock<(Platform, Option<String>)> = OnceLock::new();
    STATE.get_or_init(|| {
        let p = match std::env::var("VELLUM_PLATFORM") {
            Err(_) => Platform::Tcg,
            Ok(v) => Platform::parse(&v).unwrap_or_else(|| {
                panic!("VELLUM_PLATFORM={v:?}: expected `tcg` (the default) or `snp-emulated`")
            }),
        };
        let qemu = (p == Platform::SnpEmulated).then(build_snp_platform);
        match &qemu {
            Some(q) => eprintln!("itest: platform {} ({q})", p.name()),
            None => eprintln!("itest: platform {}", p.name()),
        }
        (p, qemu)
    })
}

/// Runs `snp-platform/build.sh --path` (progress on stderr) and returns the
/// binary's path; panics with a sentence if the platform cannot be built.
fn build_snp_platform() -> String {
    let script = root().join("snp-platform/build.sh");
    let out = Command::new(&script)
        .arg("--path")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "VELLUM_PLATFORM=snp-emulated: building the emulated SEV-SNP platform failed \
         ({} exited with {}; its messages are above). Fix that, or run the guest tests \
         on plain TCG (unset VELLUM_PLATFORM).",
        script.display(),
        out.status
    );
    path
}

impl Platform {
    /// The platform named `tcg` or `snp-emulated`.
    pub fn parse(name: &str) -> Option<Platform> {
        match name.trim() {
            "" | "tcg" => Some(Platform::Tcg),
            "snp-emulated" => Some(Platform::SnpEmulated),
            _ => None,
        }
    }

    /// Its `VELLUM_PLATFORM` name.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Tcg => "tcg",
            Platform::SnpEmulated => "snp-emulated",
        }
    }

    /// Whether the guest runs as an SEV-SNP guest there.
    pub fn is_snp(self) -> bool {
        self == Platform::SnpEmulated
    }

    /// The `run-qemu.sh` arguments that select it.
    pub fn run_args(self) -> &'static [&'static str] {
        match self {
            Platform::Tcg => &[],
            Platform::SnpEmulated => &["--snp-emulated"],
        }
    }

    /// What the kernel's banner says it runs on (`Vellum 0.1.0 - ... running ...`).
    pub fn boot_banner(self) -> &'static str {
        match self {
            Platform::Tcg => "running without SEV",
            Platform::SnpEmulated => "running under SEV-SNP",
        }
    }

    /// QEMU's exit status when the guest stops on a fatal error (a kernel
    /// panic, a refusal by the boot stage): 35 under TCG (isa-debug-exit
    /// 0x11); 86 under SEV-SNP, where the guest asks the platform to
    /// terminate it (there is no isa-debug-exit device, as on a real launch).
    pub fn failure_status(self) -> i32 {
        match self {
            Platform::Tcg => 35,
            Platform::SnpEmulated => SNP_EXIT_TERMINATED,
        }
    }

    /// What an early QEMU exit with `status` means here, for error messages.
    pub fn explain_exit(self, status: i32, log: &str) -> String {
        let mut why = match (self, status) {
            (_, 124) => "run-qemu.sh's --timeout expired".to_string(),
            (Platform::Tcg, 33) => "the guest exited cleanly (isa-debug-exit 0x10)".into(),
            (Platform::Tcg, 35) => {
                "the guest stopped on a fatal error (isa-debug-exit 0x11)".into()
            }
            (Platform::SnpEmulated, SNP_EXIT_TERMINATED) => {
                "the guest asked the platform to terminate it (see the snp-emu line)".into()
            }
            (Platform::SnpEmulated, SNP_EXIT_FATAL) => {
                "a fatal platform error caused by the guest (RMP violation or the like; see the \
                 snp-emu line)"
                    .into()
            }
            (_, s) => format!("QEMU or run-qemu.sh failed (status {s})"),
        };
        if self == Platform::SnpEmulated
            && (log.contains("sev-snp-guest.emulated") || log.contains("support confidential"))
        {
            why.push_str(
                "; this QEMU build does not have the emulated SEV-SNP platform \
                 (snp-platform/patches not applied yet?)",
            );
        }
        format!("platform {} (VELLUM_PLATFORM): {why}", self.name())
    }
}

/// Exit status of the emulated SEV-SNP platform when the guest asks it to
/// terminate (GHCB termination request); stderr says `snp-emu: guest terminated: ...`.
pub const SNP_EXIT_TERMINATED: i32 = 86;
/// Exit status of the emulated SEV-SNP platform after a fatal platform error
/// the guest caused (RMP violation and the like); stderr says `snp-emu: ...`.
pub const SNP_EXIT_FATAL: i32 = 87;

/// `run-qemu.sh` arguments every guest gets: the platform, the image under
/// test and a 15-minute limit.
fn base_args() -> Vec<String> {
    let mut args: Vec<String> = platform()
        .run_args()
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([
        "--image".into(),
        image().display().to_string(),
        "--timeout".into(),
        "900".into(),
    ]);
    args
}

/// What QEMU prints when a forwarded host port is already taken.
const PORT_TAKEN: &str = "Could not set up host forwarding rule";

/// Runs `run-qemu.sh "$@"` in the background, reports QEMU's exit status on
/// stdout, and kills the process group when its stdin closes.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null 2>&1 &
q=$!
(read -r _ <&3; kill -- -$$) &
wait $q
echo "vellum-itest: qemu exit status $?"
kill -- -$$"#;

/// The marker the watchdog prints when QEMU exits.
pub const EXIT_MARKER: &str = "vellum-itest: qemu exit status ";

/// A running guest.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<Mutex<String>>,
    /// Host port forwarded to guest port 80.
    pub http: u16,
    /// Host port forwarded to guest port 7.
    pub echo: u16,
    /// Host port forwarded to guest port 443.
    pub https: u16,
    /// Host port forwarded to guest port 7443.
    pub tls_echo: u16,
}

impl Guest {
    /// Boots the image with default options and waits for `vellum ready`.
    /// Retries (with other ports) when a host port was taken between choosing
    /// and binding it.
    pub fn boot() -> Guest {
        Guest::boot_with(&[])
    }

    /// [`Guest::boot`] with extra `run-qemu.sh` arguments.
    pub fn boot_with(extra: &[&str]) -> Guest {
        let mut attempt = 1;
        loop {
            let g = Guest::start(extra);
            match g.wait_for("vellum ready", Duration::from_secs(60)) {
                Ok(()) => return g,
                Err(e) if e.contains(PORT_TAKEN) && attempt < 5 => attempt += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Starts the image with extra `run-qemu.sh` arguments; does not wait.
    pub fn start(extra: &[&str]) -> Guest {
        let [http, echo, https, tls_echo] = free_ports::<4>();
        let mut args = base_args();
        args.extend([
            "--http-port".into(),
            http.to_string(),
            "--echo-port".into(),
            echo.to_string(),
            "--https-port".into(),
            https.to_string(),
            "--tls-echo-port".into(),
            tls_echo.to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        // Debugging aid: VELLUM_ITEST_PCAP=DIR records every guest's traffic
        // (QEMU's filter-dump on the user-net backend) to DIR/vellum-PORT.pcap.
        if let Some(dir) = std::env::var_os("VELLUM_ITEST_PCAP") {
            let file = PathBuf::from(dir).join(format!("vellum-{http}.pcap"));
            eprintln!("itest: recording guest traffic to {}", file.display());
            if !args.iter().any(|a| a == "--") {
                args.push("--".into());
            }
            args.push("-object".into());
            args.push(format!(
                "filter-dump,id=itest-dump,netdev=n0,file={}",
                file.display()
            ));
        }
        Guest::spawn(&[], args, [http, echo, https, tls_echo])
    }

    /// Starts the image on tap device `tap` inside network namespace `ns`
    /// (see [`TapNs`]); does not wait. No port forwards: the guest is at
    /// [`TapNs::GUEST`].
    pub fn start_on_tap(ns: &TapNs, extra: &[&str]) -> Guest {
        let mut args = base_args();
        args.extend(["--tap".into(), TapNs::TAP.into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let prefix = ["ip", "netns", "exec", ns.name.as_str()];
        Guest::spawn(&prefix, args, [80, 7, 443, 7443])
    }

    /// Runs `prefix… run-qemu.sh args…` under the watchdog.
    fn spawn(prefix: &[&str], args: Vec<String>, ports: [u16; 4]) -> Guest {
        let [http, echo, https, tls_echo] = ports;
        let script = root().join("run-qemu.sh").display().to_string();
        let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        argv.push(script);
        argv.extend(args);
        // Watchdog: QEMU in the background, then wait for stdin to close and
        // kill the whole (new) process group.
        let mut cmd = Command::new("setsid");
        if let Some(qemu) = &state().1 {
            cmd.env("VELLUM_SNP_QEMU", qemu);
        }
        let mut child = cmd
            .arg("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn run-qemu.sh (needs setsid and bash)");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped stdout");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().expect("log lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        Guest {
            child,
            stdin,
            log,
            http,
            echo,
            https,
            tls_echo,
        }
    }

    /// Everything the guest printed so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits until the console shows `needle`; errors (with the log) on a
    /// panic, an early QEMU exit or the timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if log.contains("PANIC")
                || log.contains("vellum-boot: fatal")
                || log.contains(EXIT_MARKER)
            {
                let why = match exit_status(&log) {
                    Some(s) => format!(" ({})", platform().explain_exit(s, &log)),
                    None => String::new(),
                };
                return Err(format!(
                    "guest failed while waiting for {needle:?}{why}:\n{log}"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {needle:?}:\n{log}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for QEMU to exit and returns its exit status.
    pub fn wait_exit(&self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(EXIT_MARKER) {
                return exit_status(&log).ok_or_else(|| format!("bad exit marker:\n{log}"));
            }
            if Instant::now() > deadline {
                return Err(format!("QEMU still running after {timeout:?}:\n{log}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// QEMU's exit status, once the watchdog's marker is in `log`.
fn exit_status(log: &str) -> Option<i32> {
    let i = log.find(EXIT_MARKER)?;
    log[i + EXIT_MARKER.len()..]
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .ok()
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"\n");
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names_round_trip() {
        for p in [Platform::Tcg, Platform::SnpEmulated] {
            assert_eq!(Platform::parse(p.name()), Some(p));
        }
        assert_eq!(Platform::parse(""), Some(Platform::Tcg));
        assert_eq!(Platform::parse("snp"), None);
        assert_eq!(Platform::SnpEmulated.run_args(), ["--snp-emulated"]);
        assert!(Platform::Tcg.run_args().is_empty());
    }

    #[test]
    fn early_exits_are_explained() {
        let p = Platform::SnpEmulated;
        assert!(
            p.explain_exit(86, "")
                .contains("asked the platform to terminate")
        );
        assert!(p.explain_exit(87, "").contains("RMP violation"));
        // QEMU without our patch, or without emulated=on support under TCG.
        let unpatched = "qemu-system-x86_64: -object sev-snp-guest,id=sev0,emulated=on: \
                         Property 'sev-snp-guest.emulated' not found";
        assert!(
            p.explain_exit(1, unpatched)
                .contains("does not have the emulated")
        );
        let no_tcg = "qemu-system-x86_64: accelerator does not support confidential guest sev0";
        assert!(
            p.explain_exit(1, no_tcg)
                .contains("does not have the emulated")
        );
        assert!(!Platform::Tcg.explain_exit(1, no_tcg).contains("emulated"));
        assert!(Platform::Tcg.explain_exit(35, "").contains("fatal error"));
    }

    #[test]
    fn exit_status_reads_the_watchdog_marker() {
        assert_eq!(
            exit_status("boot\nvellum-itest: qemu exit status 86\n"),
            Some(86)
        );
        assert_eq!(exit_status("no marker"), None);
    }
}
